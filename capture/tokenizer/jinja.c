/* jinja.c — a small Jinja interpreter for the chat templates in tokenizer_config.json, rendering as
 * transformers does (trim_blocks, lstrip_blocks, no trailing newline, loop controls). Values are jansson values
 * (NULL = undefined). The subset: if/elif/else, for (with loop.*, else, tuple targets), set (incl. namespace
 * attributes), macros (parameter defaults, keyword arguments), expressions with filters, tests, slices, string/dict
 * methods, strftime_now (transformers passes it: the local time now). Anything
 * else is refused with MTR_EFORMAT naming what is missing, never rendered differently. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "jinja.h"
#include "tokenizer_internal.h"

#define MAX_DEPTH 200
#define MAX_OUT ((size_t)1 << 28)
/* rendering steps (expressions evaluated, statements run): chat templates over a conversation take thousands */
#define MAX_STEPS 2000000L
#define MAX_REPEAT ((size_t)100000) /* longest result of 'string' * n, in bytes */

/* ---- template segments ----------------------------------------------------------------------------------- */

enum { SEG_TEXT, SEG_EXPR, SEG_STMT };

typedef struct {
    int kind;
    char *s; /* text, or the inside of the tag */
    size_t n;
    int line;
} seg;

typedef struct {
    seg *v;
    size_t n, cap;
} segs;

static int seg_push(segs *ss, int kind, const char *s, size_t n, int line)
{
    if (ss->n == ss->cap) {
        size_t cap = ss->cap ? 2 * ss->cap : 64;
        seg *v = realloc(ss->v, cap * sizeof *v);
        if (!v) return mtr_fail(MTR_ENOMEM, "out of memory");
        ss->v = v;
        ss->cap = cap;
    }
    char *p = malloc(n + 1);
    if (!p) return mtr_fail(MTR_ENOMEM, "out of memory");
    memcpy(p, s, n);
    p[n] = '\0';
    ss->v[ss->n++] = (seg){kind, p, n, line};
    return 0;
}

static bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

/* Split the source into text and tags, applying whitespace control, trim_blocks and lstrip_blocks */
static int split_segments(segs *ss, const char *src)
{
    size_t n = strlen(src);
    if (n && src[n - 1] == '\n') n--; /* keep_trailing_newline=False */
    size_t i = 0;
    bool strip_next = false, trim_nl = false;
    int line = 1, rc;
    while (i < n) {
        /* text up to the next tag */
        size_t j = i;
        while (j < n && !(src[j] == '{' && j + 1 < n && (src[j + 1] == '{' || src[j + 1] == '%' || src[j + 1] == '#'))) j++;
        size_t a = i, b = j;
        if (trim_nl && a < b && src[a] == '\n') a++;
        else if (trim_nl && a + 1 < b && src[a] == '\r' && src[a + 1] == '\n') a += 2;
        if (strip_next)
            while (a < b && is_space(src[a])) a++;
        if (j < n) {
            char k = src[j + 1];
            bool minus = j + 2 < n && src[j + 2] == '-', plus = j + 2 < n && src[j + 2] == '+';
            if (minus) {
                while (b > a && is_space(src[b - 1])) b--;
            } else if ((k == '%' || k == '#') && !plus) {
                size_t c = b;
                while (c > a && (src[c - 1] == ' ' || src[c - 1] == '\t')) c--;
                if (c == 0 || src[c - 1] == '\n') b = c;
            }
        }
        if (b > a && (rc = seg_push(ss, SEG_TEXT, src + a, b - a, line))) return rc;
        for (size_t q = i; q < j; q++) line += src[q] == '\n';
        if (j >= n) break;
        char k = src[j + 1];
        const char *close = k == '{' ? "}}" : k == '%' ? "%}" : "#}";
        size_t s0 = j + 2;
        if (s0 < n && (src[s0] == '-' || src[s0] == '+')) s0++;
        /* find the close, skipping string literals inside tags */
        size_t e = s0;
        char quote = 0;
        while (e + 1 < n + 1) {
            if (e >= n) break;
            if (k != '#' && quote) {
                if (src[e] == '\\') e++;
                else if (src[e] == quote) quote = 0;
            } else if (k != '#' && (src[e] == '\'' || src[e] == '"')) {
                quote = src[e];
            } else if (src[e] == close[0] && e + 1 < n && src[e + 1] == close[1]) {
                break;
            }
            e++;
        }
        if (e >= n) return mtr_fail(MTR_EFORMAT, "template line %d: unclosed tag", line);
        size_t s1 = e;
        strip_next = s1 > s0 && src[s1 - 1] == '-';
        if (strip_next || (s1 > s0 && src[s1 - 1] == '+')) s1--;
        trim_nl = k == '%' || k == '#';
        if (k != '#' && (rc = seg_push(ss, k == '{' ? SEG_EXPR : SEG_STMT, src + s0, s1 - s0, line))) return rc;
        for (size_t q = j; q < e; q++) line += src[q] == '\n';
        i = e + 2;
    }
    return 0;
}

/* ---- expression lexer ------------------------------------------------------------------------------------ */

enum { T_END, T_NAME, T_STR, T_NUM, T_OP };

typedef struct {
    int kind;
    char op[3];
    char *s; /* name or string (malloc'd) */
    size_t n;
    double num;
    bool is_int;
} tok;

typedef struct {
    tok *v;
    size_t n, pos;
    int line;
} toks;

/* doubles that convert to json_int_t without overflow */
static bool in_int_range(double x) { return x > -9.2e18 && x < 9.2e18; }
static json_int_t to_int(double x) { return in_int_range(x) ? (json_int_t)x : x < 0 ? INT64_MIN : x > 0 ? INT64_MAX : 0; }

static int lex(toks *ts, const char *s, int line)
{
    size_t cap = 16;
    ts->v = malloc(cap * sizeof *ts->v);
    ts->n = ts->pos = 0;
    ts->line = line;
    if (!ts->v) return mtr_fail(MTR_ENOMEM, "out of memory");
    for (size_t i = 0;;) {
        while (is_space(s[i])) i++;
        if (ts->n + 1 >= cap) {
            cap *= 2;
            tok *v = realloc(ts->v, cap * sizeof *v);
            if (!v) return mtr_fail(MTR_ENOMEM, "out of memory");
            ts->v = v;
        }
        tok *t = &ts->v[ts->n];
        memset(t, 0, sizeof *t);
        if (!s[i]) {
            t->kind = T_END;
            ts->n++;
            return 0;
        }
        char c = s[i];
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_') {
            size_t j = i;
            while ((s[j] >= 'a' && s[j] <= 'z') || (s[j] >= 'A' && s[j] <= 'Z') || s[j] == '_' || (s[j] >= '0' && s[j] <= '9')) j++;
            t->kind = T_NAME;
            t->n = j - i;
            if (!(t->s = malloc(t->n + 1))) return mtr_fail(MTR_ENOMEM, "out of memory");
            memcpy(t->s, s + i, t->n);
            t->s[t->n] = '\0';
            i = j;
        } else if (c >= '0' && c <= '9') {
            char *end;
            t->kind = T_NUM;
            t->num = strtod(s + i, &end);
            t->is_int = strcspn(s + i, ".eE") >= (size_t)(end - (s + i));
            i = (size_t)(end - s);
        } else if (c == '\'' || c == '"') {
            tk_buf b = {0};
            size_t j = i + 1;
            int rc = 0;
            while (s[j] && s[j] != c && !rc) {
                char x = s[j];
                if (x == '\\' && s[j + 1]) {
                    j++;
                    switch (s[j]) {
                    case 'n': x = '\n'; break;
                    case 't': x = '\t'; break;
                    case 'r': x = '\r'; break;
                    default: x = s[j]; break;
                    }
                }
                rc = tk_buf_put(&b, &x, 1);
                j++;
            }
            if (!rc && !b.p && !(rc = tk_buf_reserve(&b, 0))) b.p[0] = '\0'; /* '' is a string too */
            if (rc) return rc;
            if (!s[j]) {
                tk_buf_free(&b);
                return mtr_fail(MTR_EFORMAT, "template line %d: unterminated string", line);
            }
            t->kind = T_STR;
            t->s = b.p;
            t->n = b.n;
            i = j + 1;
        } else {
            static const char *const two[] = {"==", "!=", "<=", ">=", "//", "**"};
            t->kind = T_OP;
            t->op[0] = c;
            for (size_t k = 0; k < sizeof two / sizeof two[0]; k++)
                if (s[i] == two[k][0] && s[i + 1] == two[k][1]) t->op[1] = s[i + 1];
            if (!strchr("+-*/%~|.,:()[]{}=<>!", c)) return mtr_fail(MTR_EFORMAT, "template line %d: unexpected '%c'", line, c);
            i += t->op[1] ? 2 : 1;
        }
        ts->n++;
    }
}

static void toks_free(toks *ts)
{
    for (size_t i = 0; i < ts->n; i++) free(ts->v[i].s);
    free(ts->v);
    ts->v = NULL;
    ts->n = 0;
}

/* ---- AST ------------------------------------------------------------------------------------------------- */

enum {
    N_SEQ, N_TEXT, N_OUT, N_IF, N_FOR, N_SET, N_MACRO, N_BREAK, N_CONTINUE, /* statements */
    N_LIT, N_VAR, N_ATTR, N_INDEX, N_SLICE, N_CALL, N_FILTER, N_TEST, N_BIN, N_NOT, N_NEG, N_COND, N_LIST,
    N_DICT, N_KW, N_TUPLE
};

typedef struct node node;
struct node {
    int kind;
    char op[4];   /* N_BIN operator; N_TEST negation "not" */
    char *name;   /* variable, attribute, filter, test, macro, set target attribute */
    json_t *lit;  /* N_LIT */
    node *a, *b, *c;
    node **kid;   /* N_SEQ statements, call/filter args, list items, dict key/value pairs; N_MACRO parameter
                     defaults (nparams entries, NULL where none) */
    size_t nkid;
    char **params; /* N_FOR targets, N_MACRO parameters */
    size_t nparams;
    int line;
};

/* Iterative: a chain of operators is a tree as deep as it is long, which recursion would follow off the stack.
 * The nodes still to free form a list threaded through `a` (each node is on one `a` chain, walked once). */
static void node_free(node *n)
{
    node *todo = n;
    while (todo) {
        n = todo;
        todo = n->a;
        /* b, c and the kids go in front of the list: each with its own `a` chain, whose end is linked on */
        node *kids[2] = {n->b, n->c};
        for (size_t i = 0; i < 2; i++) {
            node *k = kids[i];
            if (!k) continue;
            node *tail = k; /* k's own `a` chain ends somewhere: append the list there */
            while (tail->a) tail = tail->a;
            tail->a = todo;
            todo = k;
        }
        for (size_t i = 0; i < n->nkid; i++) {
            node *k = n->kid[i];
            if (!k) continue;
            node *tail = k;
            while (tail->a) tail = tail->a;
            tail->a = todo;
            todo = k;
        }
        free(n->name);
        json_decref(n->lit);
        free(n->kid);
        for (size_t i = 0; i < n->nparams; i++) free(n->params[i]);
        free(n->params);
        free(n);
    }
}

static node *node_new(int kind, int line)
{
    node *n = calloc(1, sizeof *n);
    if (n) {
        n->kind = kind;
        n->line = line;
    }
    return n;
}

static int kid_push(node *p, node *k)
{
    node **v = realloc(p->kid, (p->nkid + 1) * sizeof *v);
    if (!v) {
        node_free(k);
        return mtr_fail(MTR_ENOMEM, "out of memory");
    }
    p->kid = v;
    p->kid[p->nkid++] = k;
    return 0;
}

static char *dupn(const char *s, size_t n)
{
    char *p = malloc(n + 1);
    if (p) {
        memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

/* ---- expression parser ----------------------------------------------------------------------------------- */

typedef struct {
    toks ts;
    int err;
    int depth; /* brackets and unary operators open around the token being parsed */
} pstate;

static tok *peek(pstate *p) { return &p->ts.v[p->ts.pos]; }
static bool is_op(pstate *p, const char *op) { return peek(p)->kind == T_OP && strcmp(peek(p)->op, op) == 0; }
static bool is_name(pstate *p, const char *nm) { return peek(p)->kind == T_NAME && strcmp(peek(p)->s, nm) == 0; }
static bool accept_op(pstate *p, const char *op)
{
    if (!is_op(p, op)) return false;
    p->ts.pos++;
    return true;
}
static bool accept_name(pstate *p, const char *nm)
{
    if (!is_name(p, nm)) return false;
    p->ts.pos++;
    return true;
}

static node *perr(pstate *p, const char *what)
{
    if (!p->err) {
        tok *t = peek(p);
        p->err = mtr_fail(MTR_EFORMAT, "template line %d: %s near '%s'", p->ts.line, what,
                         t->kind == T_END ? "end of tag" : t->kind == T_OP ? t->op : t->s ? t->s : "number");
    }
    return NULL;
}

static node *parse_expr(pstate *p);
static node *parse_or(pstate *p);

/* One more level of nesting (brackets, '-', 'not'): the parser recurses once per level, so a hostile template of
 * thousands would run it off the stack. false (error set) past MAX_DEPTH. */
static bool enter(pstate *p)
{
    if (++p->depth <= MAX_DEPTH) return true;
    if (!p->err) {
        tok *t = peek(p);
        p->err = mtr_fail(MTR_EFORMAT, "template line %d: expression nested too deeply (more than %d levels) near '%s'",
                         p->ts.line, MAX_DEPTH, t->kind == T_OP ? t->op : t->kind == T_END ? "end of tag" : "value");
    }
    return false;
}

static node *mk(pstate *p, int kind)
{
    node *n = node_new(kind, p->ts.line);
    if (!n && !p->err) p->err = mtr_fail(MTR_ENOMEM, "out of memory");
    return n;
}

/* call arguments after '(' : positional and name=value */
static bool parse_args(pstate *p, node *call)
{
    while (!accept_op(p, ")")) {
        node *v;
        if (peek(p)->kind == T_NAME && p->ts.v[p->ts.pos + 1].kind == T_OP && strcmp(p->ts.v[p->ts.pos + 1].op, "=") == 0) {
            node *kw = mk(p, N_KW);
            if (!kw) return false;
            kw->name = dupn(peek(p)->s, peek(p)->n);
            p->ts.pos += 2;
            if (!(kw->a = parse_expr(p))) {
                node_free(kw);
                return false;
            }
            v = kw;
        } else if (!(v = parse_expr(p))) {
            return false;
        }
        if (kid_push(call, v)) return false;
        if (!accept_op(p, ",") && !is_op(p, ")")) return perr(p, "expected ',' or ')'"), false;
    }
    return true;
}

static node *parse_primary(pstate *p)
{
    tok *t = peek(p);
    node *n = NULL;
    if (t->kind == T_STR || t->kind == T_NUM) {
        if (!(n = mk(p, N_LIT))) return NULL;
        n->lit = t->kind == T_STR ? json_stringn(t->s, t->n)
                                  : (t->is_int && in_int_range(t->num) ? json_integer((json_int_t)t->num)
                                                                       : json_real(t->num));
        p->ts.pos++;
        /* adjacent string literals concatenate */
        while (t->kind == T_STR && peek(p)->kind == T_STR) {
            tk_buf b = {0};
            tk_buf_put(&b, json_string_value(n->lit), json_string_length(n->lit));
            tk_buf_put(&b, peek(p)->s, peek(p)->n);
            json_decref(n->lit);
            n->lit = json_stringn(b.p ? b.p : "", b.n);
            tk_buf_free(&b);
            p->ts.pos++;
        }
    } else if (t->kind == T_NAME) {
        const char *s = t->s;
        if (!strcmp(s, "true") || !strcmp(s, "True") || !strcmp(s, "false") || !strcmp(s, "False") ||
            !strcmp(s, "none") || !strcmp(s, "None")) {
            if (!(n = mk(p, N_LIT))) return NULL;
            n->lit = s[0] == 't' || s[0] == 'T' ? json_true() : s[0] == 'f' || s[0] == 'F' ? json_false() : json_null();
        } else {
            if (!(n = mk(p, N_VAR))) return NULL;
            n->name = dupn(t->s, t->n);
        }
        p->ts.pos++;
    } else if (accept_op(p, "(")) {
        if (!(n = parse_expr(p))) return NULL;
        if (is_op(p, ",")) {
            node *tu = mk(p, N_TUPLE);
            if (!tu || kid_push(tu, n)) return node_free(tu), NULL;
            n = tu;
            while (accept_op(p, ",") && !is_op(p, ")")) {
                node *x = parse_expr(p);
                if (!x || kid_push(n, x)) return node_free(n), NULL;
            }
        }
        if (!accept_op(p, ")")) return node_free(n), perr(p, "expected ')'");
    } else if (accept_op(p, "[")) {
        if (!(n = mk(p, N_LIST))) return NULL;
        while (!accept_op(p, "]")) {
            node *x = parse_expr(p);
            if (!x || kid_push(n, x)) return node_free(n), NULL;
            if (!accept_op(p, ",") && !is_op(p, "]")) return node_free(n), perr(p, "expected ',' or ']'");
        }
    } else if (accept_op(p, "{")) {
        if (!(n = mk(p, N_DICT))) return NULL;
        while (!accept_op(p, "}")) {
            node *k = parse_expr(p);
            if (!k || kid_push(n, k)) return node_free(n), NULL;
            if (!accept_op(p, ":")) return node_free(n), perr(p, "expected ':'");
            node *v = parse_expr(p);
            if (!v || kid_push(n, v)) return node_free(n), NULL;
            if (!accept_op(p, ",") && !is_op(p, "}")) return node_free(n), perr(p, "expected ',' or '}'");
        }
    } else {
        return perr(p, "unexpected token");
    }
    if (!n) return NULL;
    /* postfix: .attr [index] [a:b:c] (args) */
    for (;;) {
        if (accept_op(p, ".")) {
            if (peek(p)->kind != T_NAME) return node_free(n), perr(p, "expected a name after '.'");
            node *x = mk(p, N_ATTR);
            if (!x) return node_free(n), NULL;
            x->a = n;
            x->name = dupn(peek(p)->s, peek(p)->n);
            p->ts.pos++;
            n = x;
        } else if (accept_op(p, "[")) {
            node *parts[3] = {NULL, NULL, NULL};
            int k = 0;
            bool slice = false;
            while (!is_op(p, "]")) {
                if (accept_op(p, ":")) {
                    slice = true;
                    if (++k > 2) return node_free(n), perr(p, "bad slice");
                    continue;
                }
                if (parts[k] || !(parts[k] = parse_expr(p))) {
                    for (int q = 0; q < 3; q++) node_free(parts[q]);
                    node_free(n);
                    return p->err ? NULL : perr(p, "bad subscript");
                }
            }
            p->ts.pos++;
            node *x = mk(p, slice ? N_SLICE : N_INDEX);
            if (!x || (!slice && !parts[0])) {
                for (int q = 0; q < 3; q++) node_free(parts[q]);
                node_free(x);
                node_free(n);
                return p->err ? NULL : perr(p, "empty subscript");
            }
            x->a = n;
            if (slice) {
                if (kid_push(x, parts[0] ? parts[0] : mk(p, N_LIT)) || kid_push(x, parts[1] ? parts[1] : mk(p, N_LIT)) ||
                    kid_push(x, parts[2] ? parts[2] : mk(p, N_LIT)))
                    return node_free(x), NULL;
            } else {
                x->b = parts[0];
            }
            n = x;
        } else if (accept_op(p, "(")) {
            node *x = mk(p, N_CALL);
            if (!x) return node_free(n), NULL;
            x->a = n;
            n = x;
            if (!parse_args(p, n)) return node_free(n), NULL;
        } else {
            return n;
        }
    }
}

static node *parse_filtered(pstate *p)
{
    node *n = parse_primary(p);
    while (n && accept_op(p, "|")) {
        if (peek(p)->kind != T_NAME) return node_free(n), perr(p, "expected a filter name");
        node *f = mk(p, N_FILTER);
        if (!f) return node_free(n), NULL;
        f->name = dupn(peek(p)->s, peek(p)->n);
        p->ts.pos++;
        f->a = n;
        n = f;
        if (accept_op(p, "(") && !parse_args(p, f)) return node_free(n), NULL;
    }
    return n;
}

static node *parse_unary(pstate *p)
{
    if (accept_op(p, "-")) {
        if (!enter(p)) return NULL;
        node *n = mk(p, N_NEG);
        if (n && !(n->a = parse_unary(p))) return node_free(n), NULL;
        p->depth--;
        return n;
    }
    node *n = parse_filtered(p);
    while (n && is_name(p, "is")) {
        p->ts.pos++;
        node *t = mk(p, N_TEST);
        if (!t) return node_free(n), NULL;
        t->a = n;
        n = t;
        if (accept_name(p, "not")) strcpy(t->op, "not");
        if (peek(p)->kind != T_NAME) return node_free(n), perr(p, "expected a test name");
        t->name = dupn(peek(p)->s, peek(p)->n);
        p->ts.pos++;
        if (peek(p)->kind == T_STR || peek(p)->kind == T_NUM || is_op(p, "(")) {
            node *arg = parse_primary(p);
            if (!arg || kid_push(t, arg)) return node_free(n), NULL;
        }
    }
    return n;
}

static node *bin(pstate *p, const char *op, node *l, node *r)
{
    if (!l || !r) {
        node_free(l);
        node_free(r);
        return NULL;
    }
    node *n = mk(p, N_BIN);
    if (!n) {
        node_free(l);
        node_free(r);
        return NULL;
    }
    snprintf(n->op, sizeof n->op, "%s", op);
    n->a = l;
    n->b = r;
    return n;
}

static node *parse_mul(pstate *p)
{
    node *n = parse_unary(p);
    for (;;) {
        const char *op = is_op(p, "*") ? "*" : is_op(p, "/") ? "/" : is_op(p, "//") ? "//" : is_op(p, "%") ? "%" : NULL;
        if (!n || !op) return n;
        p->ts.pos++;
        n = bin(p, op, n, parse_unary(p));
    }
}

static node *parse_add(pstate *p)
{
    node *n = parse_mul(p);
    for (;;) {
        const char *op = is_op(p, "+") ? "+" : is_op(p, "-") ? "-" : is_op(p, "~") ? "~" : NULL;
        if (!n || !op) return n;
        p->ts.pos++;
        n = bin(p, op, n, parse_mul(p));
    }
}

static node *parse_cmp(pstate *p)
{
    node *n = parse_add(p);
    for (;;) {
        const char *op = NULL;
        static const char *const ops[] = {"==", "!=", "<=", ">=", "<", ">"};
        for (size_t i = 0; i < 6 && !op; i++)
            if (is_op(p, ops[i])) op = ops[i];
        if (op) p->ts.pos++;
        else if (accept_name(p, "in")) op = "in";
        else if (is_name(p, "not") && p->ts.v[p->ts.pos + 1].kind == T_NAME && !strcmp(p->ts.v[p->ts.pos + 1].s, "in")) {
            p->ts.pos += 2;
            op = "!in";
        }
        if (!n || !op) return n;
        n = bin(p, op, n, parse_add(p));
    }
}

static node *parse_not(pstate *p)
{
    if (accept_name(p, "not")) {
        if (!enter(p)) return NULL;
        node *n = mk(p, N_NOT);
        if (n && !(n->a = parse_not(p))) return node_free(n), NULL;
        p->depth--;
        return n;
    }
    return parse_cmp(p);
}

static node *parse_and(pstate *p)
{
    node *n = parse_not(p);
    while (n && accept_name(p, "and")) n = bin(p, "and", n, parse_not(p));
    return n;
}

static node *parse_or(pstate *p)
{
    node *n = parse_and(p);
    while (n && accept_name(p, "or")) n = bin(p, "or", n, parse_and(p));
    return n;
}

static node *parse_expr(pstate *p)
{
    if (!enter(p)) return NULL;
    node *n = parse_or(p);
    if (n && accept_name(p, "if")) {
        node *c = mk(p, N_COND);
        if (!c) return node_free(n), NULL;
        c->a = n;
        if (!(c->b = parse_or(p))) return node_free(c), NULL;
        if (accept_name(p, "else") && !(c->c = parse_expr(p))) return node_free(c), NULL;
        n = c;
    }
    p->depth--;
    return n;
}

/* ---- statement parser ------------------------------------------------------------------------------------ */

typedef struct {
    segs ss;
    size_t pos;
    int depth; /* blocks (if, for, macro) open around the segment being parsed */
} sparser;

/* Parse statements until one of the end keywords (NULL-terminated list) starts a tag; *stop gets its index */
static int parse_body(sparser *sp, node *seq, const char *const *ends, int *stop, pstate *hold);
static int parse_body_in(sparser *sp, node *seq, const char *const *ends, int *stop, pstate *hold);

static int parse_stmt(sparser *sp, seg *sg, node *seq, const char *const *ends, int *stop, pstate *ps)
{
    int rc;
    pstate p = {{0}, 0, 0};
    if ((rc = lex(&p.ts, sg->s, sg->line))) goto done;
    tok *kw = peek(&p);
    if (kw->kind != T_NAME) {
        rc = mtr_fail(MTR_EFORMAT, "template line %d: statement without keyword", sg->line);
        goto done;
    }
    for (int i = 0; ends && ends[i]; i++)
        if (!strcmp(kw->s, ends[i])) {
            p.ts.pos++;
            *stop = i;
            *ps = p; /* the caller reads the rest (elif condition) */
            return 1;
        }
    p.ts.pos++;
    node *n = NULL;
    if (!strcmp(kw->s, "if")) {
        node *cur = n = mk(&p, N_IF);
        if (!n || !(n->a = parse_expr(&p))) goto perr;
        for (;;) {
            static const char *const e[] = {"elif", "else", "endif", NULL};
            int which = -1;
            pstate rest = {{0}, 0, 0};
            if (!(cur->b = mk(&p, N_SEQ))) goto perr;
            if ((rc = parse_body(sp, cur->b, e, &which, &rest)) < 0) goto fail;
            if (which == 0) {
                node *el = mk(&p, N_IF);
                if (!el) { toks_free(&rest.ts); goto perr; }
                cur->c = el;
                el->a = parse_expr(&rest);
                rc = rest.err;
                toks_free(&rest.ts);
                if (!el->a) goto fail;
                cur = el;
            } else if (which == 1) {
                toks_free(&rest.ts);
                static const char *const e2[] = {"endif", NULL};
                if (!(cur->c = mk(&p, N_SEQ))) goto perr;
                if ((rc = parse_body(sp, cur->c, e2, &which, &rest)) < 0) goto fail;
                toks_free(&rest.ts);
                break;
            } else {
                toks_free(&rest.ts);
                break;
            }
        }
    } else if (!strcmp(kw->s, "for")) {
        n = mk(&p, N_FOR);
        if (!n) goto perr;
        do {
            if (peek(&p)->kind != T_NAME) { perr(&p, "expected a loop variable"); goto perr; }
            char **v = realloc(n->params, (n->nparams + 1) * sizeof *v);
            if (!v) goto perr;
            n->params = v;
            n->params[n->nparams++] = dupn(peek(&p)->s, peek(&p)->n);
            p.ts.pos++;
        } while (accept_op(&p, ","));
        if (!accept_name(&p, "in")) { perr(&p, "expected 'in'"); goto perr; }
        if (!(n->a = parse_or(&p))) goto perr;
        if (accept_name(&p, "if")) {
            perr(&p, "loop filters are not supported");
            goto perr;
        }
        static const char *const e[] = {"else", "endfor", NULL};
        int which = -1;
        pstate rest = {{0}, 0, 0};
        if (!(n->b = mk(&p, N_SEQ))) goto perr;
        if ((rc = parse_body(sp, n->b, e, &which, &rest)) < 0) goto fail;
        toks_free(&rest.ts);
        if (which == 0) {
            static const char *const e2[] = {"endfor", NULL};
            if (!(n->c = mk(&p, N_SEQ))) goto perr;
            if ((rc = parse_body(sp, n->c, e2, &which, &rest)) < 0) goto fail;
            toks_free(&rest.ts);
        }
    } else if (!strcmp(kw->s, "set")) {
        n = mk(&p, N_SET);
        if (!n) goto perr;
        if (peek(&p)->kind != T_NAME) { perr(&p, "expected a name to set"); goto perr; }
        char **v = malloc(sizeof *v);
        if (!v) goto perr;
        n->params = v;
        n->params[n->nparams++] = dupn(peek(&p)->s, peek(&p)->n);
        p.ts.pos++;
        if (accept_op(&p, ".")) {
            if (peek(&p)->kind != T_NAME) { perr(&p, "expected an attribute"); goto perr; }
            n->name = dupn(peek(&p)->s, peek(&p)->n);
            p.ts.pos++;
        }
        if (!accept_op(&p, "=")) { perr(&p, "block set is not supported"); goto perr; }
        if (!(n->a = parse_expr(&p))) goto perr;
    } else if (!strcmp(kw->s, "macro")) {
        n = mk(&p, N_MACRO);
        if (!n || peek(&p)->kind != T_NAME) { perr(&p, "expected a macro name"); goto perr; }
        n->name = dupn(peek(&p)->s, peek(&p)->n);
        p.ts.pos++;
        if (!accept_op(&p, "(")) { perr(&p, "expected '('"); goto perr; }
        while (!accept_op(&p, ")")) {
            if (peek(&p)->kind != T_NAME) { perr(&p, "expected a parameter"); goto perr; }
            char **v = realloc(n->params, (n->nparams + 1) * sizeof *v);
            if (!v) goto perr;
            n->params = v;
            node **dv = realloc(n->kid, (n->nparams + 1) * sizeof *dv);
            if (!dv) goto perr;
            n->kid = dv;
            n->kid[n->nparams] = NULL;
            n->nkid = n->nparams + 1;
            n->params[n->nparams++] = dupn(peek(&p)->s, peek(&p)->n);
            p.ts.pos++;
            if (accept_op(&p, "=") && !(n->kid[n->nparams - 1] = parse_expr(&p))) goto perr;
            accept_op(&p, ",");
        }
        static const char *const e[] = {"endmacro", NULL};
        int which = -1;
        pstate rest = {{0}, 0, 0};
        if (!(n->b = mk(&p, N_SEQ))) goto perr;
        if ((rc = parse_body(sp, n->b, e, &which, &rest)) < 0) goto fail;
        toks_free(&rest.ts);
    } else if (!strcmp(kw->s, "break") || !strcmp(kw->s, "continue")) {
        n = mk(&p, kw->s[0] == 'b' ? N_BREAK : N_CONTINUE);
        if (!n) goto perr;
    } else {
        rc = mtr_fail(MTR_EFORMAT, "template line %d: '%s' statements are not supported", sg->line, kw->s);
        goto done;
    }
    if (peek(&p)->kind != T_END) {
        perr(&p, "unexpected text after statement");
        goto perr;
    }
    rc = kid_push(seq, n);
    n = NULL;
    goto done;
perr:
    rc = p.err ? p.err : mtr_fail(MTR_EFORMAT, "template line %d: cannot parse statement", sg->line);
fail:
    node_free(n);
    if (rc >= 0) rc = MTR_EFORMAT;
done:
    toks_free(&p.ts);
    return rc;
}

static int parse_body(sparser *sp, node *seq, const char *const *ends, int *stop, pstate *hold)
{
    int rc;
    /* each block recurses: a hostile template nesting thousands would run the parser off the stack */
    if (sp->depth >= MAX_DEPTH)
        return mtr_fail(MTR_EFORMAT, "template line %d: blocks nested too deeply (more than %d levels)",
                       sp->pos ? sp->ss.v[sp->pos - 1].line : 1, MAX_DEPTH);
    sp->depth++;
    rc = parse_body_in(sp, seq, ends, stop, hold);
    sp->depth--;
    return rc;
}

static int parse_body_in(sparser *sp, node *seq, const char *const *ends, int *stop, pstate *hold)
{
    int rc;
    while (sp->pos < sp->ss.n) {
        seg *sg = &sp->ss.v[sp->pos++];
        if (sg->kind == SEG_TEXT) {
            node *t = node_new(N_TEXT, sg->line);
            if (!t) return mtr_fail(MTR_ENOMEM, "out of memory");
            t->lit = json_stringn(sg->s, sg->n);
            if ((rc = kid_push(seq, t))) return rc;
        } else if (sg->kind == SEG_EXPR) {
            pstate p = {{0}, 0, 0};
            if ((rc = lex(&p.ts, sg->s, sg->line))) {
                toks_free(&p.ts);
                return rc;
            }
            node *o = node_new(N_OUT, sg->line);
            if (o) o->a = parse_expr(&p);
            if (o && o->a && peek(&p)->kind != T_END) perr(&p, "unexpected text in expression");
            rc = p.err ? p.err : !o ? mtr_fail(MTR_ENOMEM, "out of memory") : 0;
            toks_free(&p.ts);
            if (rc) {
                node_free(o);
                return rc;
            }
            if ((rc = kid_push(seq, o))) return rc;
        } else {
            rc = parse_stmt(sp, sg, seq, ends, stop, hold);
            if (rc == 1) return 0;
            if (rc) return rc;
        }
    }
    if (ends) return mtr_fail(MTR_EFORMAT, "template: missing {%% %s %%}", ends[0]);
    return 0;
}

/* ---- values ---------------------------------------------------------------------------------------------- */

typedef struct {
    tk_buf out;
    json_t **scope; /* stack of objects: innermost last */
    size_t nscope, capscope;
    json_t *macros; /* name -> pointer to node (as integer) */
    int depth;
    int flow;       /* 1 break, 2 continue */
    long steps;     /* expressions evaluated and statements run, against MAX_STEPS */
} renv;

static int rerr(const node *n, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int rerr(const node *n, const char *fmt, ...)
{
    char msg[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return mtr_fail(MTR_EFORMAT, "template line %d: %s", n ? n->line : 0, msg);
}

static bool truthy(json_t *v)
{
    if (!v) return false;
    switch (json_typeof(v)) {
    case JSON_NULL: case JSON_FALSE: return false;
    case JSON_TRUE: return true;
    case JSON_INTEGER: return json_integer_value(v) != 0;
    case JSON_REAL: return json_real_value(v) != 0;
    case JSON_STRING: return json_string_length(v) > 0;
    case JSON_ARRAY: return json_array_size(v) > 0;
    case JSON_OBJECT: return json_object_size(v) > 0;
    }
    return false;
}

/* Python str() of a value, appended to b */
static int to_str(tk_buf *b, json_t *v);

static int dump_json(tk_buf *b, json_t *v, bool python)
{
    if (python && json_is_string(v)) {
        /* repr: single quotes */
        int rc = tk_buf_put(b, "'", 1);
        if (!rc) rc = tk_buf_put(b, json_string_value(v), json_string_length(v));
        return rc ? rc : tk_buf_put(b, "'", 1);
    }
    if (python && (json_is_array(v) || json_is_object(v))) {
        int rc = tk_buf_put(b, json_is_array(v) ? "[" : "{", 1);
        if (json_is_array(v)) {
            for (size_t i = 0; i < json_array_size(v) && !rc; i++) {
                if (i) rc = tk_buf_put(b, ", ", 2);
                if (!rc) rc = dump_json(b, json_array_get(v, i), true);
            }
        } else {
            const char *k;
            json_t *x;
            size_t i = 0;
            json_object_foreach(v, k, x) {
                if (rc) break;
                if (i++) rc = tk_buf_put(b, ", ", 2);
                json_t *ks = json_string(k);
                if (!rc) rc = dump_json(b, ks, true);
                json_decref(ks);
                if (!rc) rc = tk_buf_put(b, ": ", 2);
                if (!rc) rc = dump_json(b, x, true);
            }
        }
        return rc ? rc : tk_buf_put(b, json_is_array(v) ? "]" : "}", 1);
    }
    if (python && !json_is_string(v)) return to_str(b, v);
    /* tojson: Python json.dumps(ensure_ascii=False) spacing */
    char *s = json_dumps(v, JSON_ENCODE_ANY | JSON_PRESERVE_ORDER);
    if (!s) return mtr_fail(MTR_ENOMEM, "out of memory");
    int rc = tk_buf_put(b, s, strlen(s));
    free(s);
    return rc;
}

static int to_str(tk_buf *b, json_t *v)
{
    char num[64];
    if (!v) return 0;
    switch (json_typeof(v)) {
    case JSON_STRING: return tk_buf_put(b, json_string_value(v), json_string_length(v));
    case JSON_INTEGER:
        snprintf(num, sizeof num, "%lld", (long long)json_integer_value(v));
        return tk_buf_put(b, num, strlen(num));
    case JSON_REAL: {
        double x = json_real_value(v);
        if (x == floor(x) && fabs(x) < 1e16) snprintf(num, sizeof num, "%.1f", x);
        else snprintf(num, sizeof num, "%.17g", x);
        return tk_buf_put(b, num, strlen(num));
    }
    case JSON_TRUE: return tk_buf_put(b, "True", 4);
    case JSON_FALSE: return tk_buf_put(b, "False", 5);
    case JSON_NULL: return tk_buf_put(b, "None", 4);
    default: return dump_json(b, v, true);
    }
}

static json_t *str_of(json_t *v)
{
    tk_buf b = {0};
    if (to_str(&b, v)) {
        tk_buf_free(&b);
        return NULL;
    }
    json_t *s = json_stringn(b.p ? b.p : "", b.n);
    tk_buf_free(&b);
    return s;
}

static bool values_equal(json_t *a, json_t *b)
{
    if (!a || !b) return !a && !b;
    if (json_is_number(a) && json_is_number(b)) return json_number_value(a) == json_number_value(b);
    if (json_is_boolean(a) && json_is_boolean(b)) return json_is_true(a) == json_is_true(b);
    return json_equal(a, b);
}

static json_t *lookup(renv *e, const char *name)
{
    for (size_t i = e->nscope; i-- > 0;) {
        json_t *v = json_object_get(e->scope[i], name);
        if (v) return json_incref(v);
    }
    return NULL;
}

static int push_scope(renv *e)
{
    if (e->nscope == e->capscope) {
        size_t cap = e->capscope ? 2 * e->capscope : 8;
        json_t **v = realloc(e->scope, cap * sizeof *v);
        if (!v) return mtr_fail(MTR_ENOMEM, "out of memory");
        e->scope = v;
        e->capscope = cap;
    }
    if (!(e->scope[e->nscope] = json_object())) return mtr_fail(MTR_ENOMEM, "out of memory");
    e->nscope++;
    return 0;
}

static void pop_scope(renv *e) { json_decref(e->scope[--e->nscope]); }

/* ---- evaluation ------------------------------------------------------------------------------------------ */

static int eval(renv *e, const node *n, json_t **out);
static int exec(renv *e, const node *n);

/* Python-style strip of the characters in chars (NULL = whitespace) */
static json_t *py_strip(json_t *s, json_t *chars, bool left, bool right)
{
    const char *p = json_string_value(s);
    size_t a = 0, b = json_string_length(s);
    const char *set = chars && json_is_string(chars) ? json_string_value(chars) : " \t\n\r\f\v";
    while (left && a < b && strchr(set, p[a]) && p[a]) a++;
    while (right && b > a && strchr(set, p[b - 1]) && p[b - 1]) b--;
    return json_stringn(p + a, b - a);
}

static int str_method(const node *n, json_t *obj, const char *m, json_t **args, size_t na, json_t **out)
{
    const char *s = json_string_value(obj);
    size_t sl = json_string_length(obj);
    if (!strcmp(m, "startswith") || !strcmp(m, "endswith")) {
        if (na != 1 || !json_is_string(args[0])) return rerr(n, "%s takes one string", m);
        size_t pl = json_string_length(args[0]);
        bool r = pl <= sl && memcmp(m[0] == 's' ? s : s + sl - pl, json_string_value(args[0]), pl) == 0;
        *out = json_boolean(r);
        return 0;
    }
    if (!strcmp(m, "strip") || !strcmp(m, "lstrip") || !strcmp(m, "rstrip")) {
        *out = py_strip(obj, na ? args[0] : NULL, m[0] != 'r', m[0] != 'l');
        return 0;
    }
    if (!strcmp(m, "upper") || !strcmp(m, "lower")) {
        char *c = dupn(s, sl);
        if (!c) return mtr_fail(MTR_ENOMEM, "out of memory");
        for (size_t i = 0; i < sl; i++)
            if (m[0] == 'u' && c[i] >= 'a' && c[i] <= 'z') c[i] = (char)(c[i] - 32);
            else if (m[0] == 'l' && c[i] >= 'A' && c[i] <= 'Z') c[i] = (char)(c[i] + 32);
        *out = json_stringn(c, sl);
        free(c);
        return 0;
    }
    if (!strcmp(m, "split")) {
        json_t *arr = json_array();
        if (na >= 1 && json_is_string(args[0]) && json_string_length(args[0])) {
            const char *sep = json_string_value(args[0]);
            size_t pl = json_string_length(args[0]), a = 0;
            for (size_t i = 0; i + pl <= sl;) {
                if (memcmp(s + i, sep, pl) == 0) {
                    json_array_append_new(arr, json_stringn(s + a, i - a));
                    i += pl;
                    a = i;
                } else {
                    i++;
                }
            }
            json_array_append_new(arr, json_stringn(s + a, sl - a));
        } else {
            for (size_t i = 0; i < sl;) {
                while (i < sl && is_space(s[i])) i++;
                size_t a = i;
                while (i < sl && !is_space(s[i])) i++;
                if (i > a) json_array_append_new(arr, json_stringn(s + a, i - a));
            }
        }
        *out = arr;
        return 0;
    }
    if (!strcmp(m, "replace")) {
        if (na < 2 || !json_is_string(args[0]) || !json_is_string(args[1]) || !json_string_length(args[0]))
            return rerr(n, "replace takes two strings");
        tk_buf b = {0};
        const char *from = json_string_value(args[0]);
        size_t fl = json_string_length(args[0]);
        int rc = 0;
        for (size_t i = 0; i < sl && !rc;) {
            if (i + fl <= sl && memcmp(s + i, from, fl) == 0) {
                rc = tk_buf_put(&b, json_string_value(args[1]), json_string_length(args[1]));
                i += fl;
            } else {
                rc = tk_buf_put(&b, s + i++, 1);
            }
        }
        *out = rc ? NULL : json_stringn(b.p ? b.p : "", b.n);
        tk_buf_free(&b);
        return rc;
    }
    return rerr(n, "string method '%s' is not supported", m);
}

static int call_method(renv *e, const node *n, json_t **args, size_t na, json_t **out)
{
    json_t *obj = NULL;
    int rc = eval(e, n->a->a, &obj);
    if (rc) return rc;
    const char *m = n->a->name;
    if (json_is_string(obj)) {
        rc = str_method(n, obj, m, args, na, out);
    } else if (json_is_object(obj) && !strcmp(m, "get")) {
        json_t *v = na >= 1 && json_is_string(args[0]) ? json_object_get(obj, json_string_value(args[0])) : NULL;
        *out = v ? json_incref(v) : na >= 2 ? json_incref(args[1]) : json_null();
    } else if (json_is_object(obj) && (!strcmp(m, "items") || !strcmp(m, "keys") || !strcmp(m, "values"))) {
        json_t *arr = json_array();
        const char *k;
        json_t *v;
        json_object_foreach(obj, k, v) {
            if (m[0] == 'i') json_array_append_new(arr, json_pack("[sO]", k, v));
            else if (m[0] == 'k') json_array_append_new(arr, json_string(k));
            else json_array_append(arr, v);
        }
        *out = arr;
    } else {
        rc = rerr(n, "method '%s' is not supported on this value", m);
    }
    json_decref(obj);
    return rc;
}

static int call_macro(renv *e, const node *n, const node *mac, json_t **args, size_t na, json_t *kw, json_t **out)
{
    int rc;
    if (e->depth > MAX_DEPTH) return rerr(n, "recursion too deep");
    tk_buf saved = e->out;
    memset(&e->out, 0, sizeof e->out);
    if ((rc = push_scope(e))) goto done;
    /* positional, else keyword, else the default (evaluated now, seeing the parameters before it) */
    for (size_t i = 0; i < mac->nparams && !rc; i++) {
        json_t *v = i < na && args[i] ? json_incref(args[i]) : json_incref(json_object_get(kw, mac->params[i]));
        if (!v && i < mac->nkid && mac->kid[i] && (rc = eval(e, mac->kid[i], &v))) break;
        json_object_set_new(e->scope[e->nscope - 1], mac->params[i], v ? v : json_null());
    }
    if (rc) {
        pop_scope(e);
        goto done;
    }
    e->depth++;
    rc = exec(e, mac->b);
    e->depth--;
    pop_scope(e);
    if (!rc) *out = json_stringn(e->out.p ? e->out.p : "", e->out.n);
done:
    tk_buf_free(&e->out);
    e->out = saved;
    return rc;
}

static int eval_call(renv *e, const node *n, json_t **out)
{
    json_t *args[8] = {NULL};
    size_t na = 0;
    json_t *kw = json_object();
    int rc = 0;
    for (size_t i = 0; i < n->nkid && !rc; i++) {
        const node *k = n->kid[i];
        json_t *v = NULL;
        if ((rc = eval(e, k->kind == N_KW ? k->a : k, &v))) break;
        if (k->kind == N_KW) json_object_set_new(kw, k->name, v ? v : json_null());
        else if (na < 8) args[na++] = v;
        else {
            json_decref(v);
            rc = rerr(n, "too many arguments");
        }
    }
    if (rc) goto done;
    if (n->a->kind == N_ATTR) {
        rc = call_method(e, n, args, na, out);
    } else if (n->a->kind == N_VAR) {
        const char *f = n->a->name;
        json_t *mp = json_object_get(e->macros, f);
        if (mp) {
            rc = call_macro(e, n, (const node *)(uintptr_t)json_integer_value(mp), args, na, kw, out);
        } else if (!strcmp(f, "namespace")) {
            *out = json_object();
            if (na == 1 && json_is_object(args[0])) json_object_update(*out, args[0]);
            json_object_update(*out, kw);
        } else if (!strcmp(f, "strftime_now")) {
            /* transformers: datetime.now().strftime(format); MTR_TEMPLATE_NOW (seconds since the epoch) pins it */
            const char *fmt = na == 1 ? json_string_value(args[0]) : NULL, *pin = getenv("MTR_TEMPLATE_NOW");
            time_t now = pin && *pin ? (time_t)strtoll(pin, NULL, 10) : time(NULL);
            struct tm tmv;
            char buf[256];
            size_t len;
            if (!fmt) rc = rerr(n, "strftime_now needs one format string");
            else {
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral" /* the template's own format, as Python's strftime takes it */
                len = localtime_r(&now, &tmv) ? strftime(buf, sizeof buf, fmt, &tmv) : 0;
#pragma GCC diagnostic pop
                if (len == 0 && *fmt) rc = rerr(n, "strftime_now: format '%s' gives nothing", fmt);
                else *out = json_stringn(buf, len);
            }
        } else if (!strcmp(f, "raise_exception")) {
            rc = rerr(n, "template raised: %s", na && json_is_string(args[0]) ? json_string_value(args[0]) : "");
        } else if (!strcmp(f, "range")) {
            json_int_t a = 0, b = 0, s = 1;
            if (na == 1) b = json_integer_value(args[0]);
            else if (na >= 2) {
                a = json_integer_value(args[0]);
                b = json_integer_value(args[1]);
                if (na >= 3) s = json_integer_value(args[2]);
            }
            if (!s || (b - a) / s > 100000) {
                rc = rerr(n, "bad range");
            } else {
                *out = json_array();
                for (json_int_t i = a; s > 0 ? i < b : i > b; i += s) json_array_append_new(*out, json_integer(i));
            }
        } else {
            rc = rerr(n, "function '%s' is not supported", f);
        }
    } else {
        rc = rerr(n, "this call is not supported");
    }
done:
    for (size_t i = 0; i < na; i++) json_decref(args[i]);
    json_decref(kw);
    return rc;
}

static int eval_filter(renv *e, const node *n, json_t **out)
{
    json_t *v = NULL;
    int rc = eval(e, n->a, &v);
    if (rc) return rc;
    const char *f = n->name;
    json_t *arg = NULL;
    if (n->nkid && (rc = eval(e, n->kid[0]->kind == N_KW ? n->kid[0]->a : n->kid[0], &arg))) goto done;
    if (!strcmp(f, "length") || !strcmp(f, "count")) {
        size_t len = 0;
        if (json_is_string(v)) {
            const char *s = json_string_value(v);
            for (size_t i = 0; i < json_string_length(v); i++) len += ((unsigned char)s[i] & 0xC0) != 0x80;
        } else if (json_is_array(v)) len = json_array_size(v);
        else if (json_is_object(v)) len = json_object_size(v);
        *out = json_integer((json_int_t)len);
    } else if (!strcmp(f, "tojson")) {
        tk_buf b = {0};
        if (!(rc = dump_json(&b, v ? v : json_null(), false))) *out = json_stringn(b.p ? b.p : "", b.n);
        tk_buf_free(&b);
    } else if (!strcmp(f, "trim")) {
        *out = json_is_string(v) ? py_strip(v, NULL, true, true) : json_incref(v);
    } else if (!strcmp(f, "string")) {
        *out = str_of(v);
    } else if (!strcmp(f, "upper") || !strcmp(f, "lower")) {
        if (json_is_string(v)) rc = str_method(n, v, f, NULL, 0, out);
        else *out = json_incref(v);
    } else if (!strcmp(f, "first") || !strcmp(f, "last")) {
        size_t k = json_array_size(v);
        *out = k ? json_incref(json_array_get(v, f[0] == 'f' ? 0 : k - 1)) : NULL;
    } else if (!strcmp(f, "default") || !strcmp(f, "d")) {
        *out = v ? json_incref(v) : json_incref(arg);
    } else if (!strcmp(f, "join")) {
        tk_buf b = {0};
        for (size_t i = 0; i < json_array_size(v) && !rc; i++) {
            if (i && arg) rc = to_str(&b, arg);
            if (!rc) rc = to_str(&b, json_array_get(v, i));
        }
        if (!rc) *out = json_stringn(b.p ? b.p : "", b.n);
        tk_buf_free(&b);
    } else if (!strcmp(f, "reverse") || !strcmp(f, "list")) {
        *out = json_array();
        size_t k = json_array_size(v);
        for (size_t i = 0; i < k; i++) json_array_append(*out, json_array_get(v, f[0] == 'r' ? k - 1 - i : i));
    } else if (!strcmp(f, "items")) {
        *out = json_array();
        const char *k;
        json_t *x;
        json_object_foreach(v, k, x) json_array_append_new(*out, json_pack("[sO]", k, x));
    } else if (!strcmp(f, "safe") || !strcmp(f, "e") || !strcmp(f, "escape")) {
        *out = v ? json_incref(v) : NULL;
    } else if (!strcmp(f, "int")) {
        *out = json_integer(json_is_number(v) ? to_int(json_number_value(v))
                                               : json_is_string(v) ? strtoll(json_string_value(v), NULL, 10) : 0);
    } else {
        rc = rerr(n, "filter '%s' is not supported", f);
    }
done:
    json_decref(v);
    json_decref(arg);
    return rc;
}

static int eval_test(renv *e, const node *n, json_t **out)
{
    json_t *v = NULL, *arg = NULL;
    int rc = eval(e, n->a, &v);
    if (!rc && n->nkid) rc = eval(e, n->kid[0], &arg);
    if (rc) goto done;
    const char *t = n->name;
    bool r;
    if (!strcmp(t, "defined")) r = v != NULL;
    else if (!strcmp(t, "undefined")) r = v == NULL;
    else if (!strcmp(t, "none")) r = v && json_is_null(v);
    else if (!strcmp(t, "string")) r = v && json_is_string(v);
    else if (!strcmp(t, "number")) r = v && json_is_number(v);
    else if (!strcmp(t, "integer")) r = v && json_is_integer(v);
    else if (!strcmp(t, "boolean")) r = v && json_is_boolean(v);
    else if (!strcmp(t, "true")) r = v && json_is_true(v);
    else if (!strcmp(t, "false")) r = v && json_is_false(v);
    else if (!strcmp(t, "mapping")) r = v && json_is_object(v);
    else if (!strcmp(t, "sequence") || !strcmp(t, "iterable")) r = v && (json_is_array(v) || json_is_string(v) || json_is_object(v));
    else if (!strcmp(t, "odd") || !strcmp(t, "even")) r = v && json_is_integer(v) && (json_integer_value(v) % 2 != 0) == (t[0] == 'o');
    else if (!strcmp(t, "equalto") || !strcmp(t, "eq")) r = values_equal(v, arg);
    else {
        rc = rerr(n, "test '%s' is not supported", t);
        goto done;
    }
    *out = json_boolean(n->op[0] ? !r : r);
done:
    json_decref(v);
    json_decref(arg);
    return rc;
}

static int eval_index(renv *e, const node *n, json_t **out)
{
    json_t *o = NULL, *k = NULL;
    int rc = eval(e, n->a, &o);
    if (!rc) rc = eval(e, n->b, &k);
    if (rc) goto done;
    if (json_is_object(o) && json_is_string(k)) {
        json_t *v = json_object_get(o, json_string_value(k));
        *out = v ? json_incref(v) : NULL;
    } else if ((json_is_array(o) || json_is_string(o)) && json_is_integer(k)) {
        json_int_t i = json_integer_value(k);
        if (json_is_array(o)) {
            json_int_t len = (json_int_t)json_array_size(o);
            if (i < 0) i += len;
            *out = i >= 0 && i < len ? json_incref(json_array_get(o, (size_t)i)) : NULL;
        } else {
            json_int_t len = (json_int_t)json_string_length(o); /* byte index: templates index ASCII only */
            if (i < 0) i += len;
            *out = i >= 0 && i < len ? json_stringn(json_string_value(o) + i, 1) : NULL;
        }
    } else {
        *out = NULL; /* undefined, as Jinja */
    }
done:
    json_decref(o);
    json_decref(k);
    return rc;
}

static int eval_slice(renv *e, const node *n, json_t **out)
{
    json_t *o = NULL, *p[3] = {NULL, NULL, NULL};
    int rc = eval(e, n->a, &o);
    for (int i = 0; i < 3 && !rc; i++) rc = eval(e, n->kid[i], &p[i]);
    if (rc) goto done;
    bool is_str = json_is_string(o);
    if (!is_str && !json_is_array(o)) {
        rc = rerr(n, "slice of a value that is not a list or string");
        goto done;
    }
    json_int_t len = is_str ? (json_int_t)json_string_length(o) : (json_int_t)json_array_size(o);
    json_int_t step = json_is_integer(p[2]) ? json_integer_value(p[2]) : 1;
    if (!step) {
        rc = rerr(n, "slice step 0");
        goto done;
    }
    json_int_t a, b;
    if (step > 0) {
        a = json_is_integer(p[0]) ? json_integer_value(p[0]) : 0;
        b = json_is_integer(p[1]) ? json_integer_value(p[1]) : len;
        if (a < 0) a = a + len < 0 ? 0 : a + len;
        if (b < 0) b = b + len < 0 ? 0 : b + len;
        if (a > len) a = len;
        if (b > len) b = len;
    } else {
        a = json_is_integer(p[0]) ? json_integer_value(p[0]) : len - 1;
        b = json_is_integer(p[1]) ? json_integer_value(p[1]) : -1 - len;
        if (a < 0) a = a + len < -1 ? -1 : a + len;
        if (b < 0) b = b + len < -1 ? -1 : b + len;
        if (a >= len) a = len - 1;
        if (b >= len) b = len - 1;
    }
    tk_buf sb = {0};
    json_t *arr = is_str ? NULL : json_array();
    for (json_int_t i = a; step > 0 ? i < b : i > b; i += step) {
        if (is_str) rc = tk_buf_put(&sb, json_string_value(o) + i, 1);
        else json_array_append(arr, json_array_get(o, (size_t)i));
        if (rc) break;
    }
    *out = is_str ? json_stringn(sb.p ? sb.p : "", sb.n) : arr;
    tk_buf_free(&sb);
done:
    json_decref(o);
    for (int i = 0; i < 3; i++) json_decref(p[i]);
    return rc;
}

static int eval_bin(renv *e, const node *n, json_t **out)
{
    const char *op = n->op;
    json_t *l = NULL, *r = NULL;
    int rc = eval(e, n->a, &l);
    if (rc) return rc;
    if (!strcmp(op, "and") || !strcmp(op, "or")) {
        bool lt = truthy(l);
        if ((op[0] == 'a' && !lt) || (op[0] == 'o' && lt)) {
            *out = l;
            return 0;
        }
        json_decref(l);
        return eval(e, n->b, out);
    }
    if ((rc = eval(e, n->b, &r))) goto done;
    if (!strcmp(op, "==") || !strcmp(op, "!=")) {
        *out = json_boolean(values_equal(l, r) == (op[0] == '='));
    } else if (!strcmp(op, "in") || !strcmp(op, "!in")) {
        bool found = false;
        if (json_is_string(r) && json_is_string(l)) {
            found = memmem(json_string_value(r), json_string_length(r), json_string_value(l), json_string_length(l)) != NULL;
        } else if (json_is_array(r)) {
            for (size_t i = 0; i < json_array_size(r) && !found; i++) found = values_equal(l, json_array_get(r, i));
        } else if (json_is_object(r) && json_is_string(l)) {
            found = json_object_get(r, json_string_value(l)) != NULL;
        }
        *out = json_boolean(found == (op[0] == 'i'));
    } else if (!strcmp(op, "~") || (!strcmp(op, "+") && json_is_string(l) && json_is_string(r))) {
        tk_buf b = {0};
        rc = to_str(&b, l);
        if (!rc) rc = to_str(&b, r);
        if (!rc) *out = json_stringn(b.p ? b.p : "", b.n);
        tk_buf_free(&b);
    } else if (!strcmp(op, "+") && json_is_array(l) && json_is_array(r)) {
        *out = json_copy(l);
        json_array_extend(*out, r);
    } else if (json_is_number(l) && json_is_number(r)) {
        bool ints = json_is_integer(l) && json_is_integer(r);
        double x = json_number_value(l), y = json_number_value(r);
        json_int_t xi = ints ? json_integer_value(l) : 0, yi = ints ? json_integer_value(r) : 0, zi;
        switch (op[0]) {
        /* integers that overflow 64 bits become reals (Python's would grow) */
        case '+': *out = ints && !__builtin_add_overflow(xi, yi, &zi) ? json_integer(zi) : json_real(x + y); break;
        case '-': *out = ints && !__builtin_sub_overflow(xi, yi, &zi) ? json_integer(zi) : json_real(x - y); break;
        case '*': *out = ints && !__builtin_mul_overflow(xi, yi, &zi) ? json_integer(zi) : json_real(x * y); break;
        case '/':
            if (y == 0) { rc = rerr(n, "division by zero"); break; }
            *out = op[1] == '/' && ints && in_int_range(floor(x / y)) ? json_integer((json_int_t)floor(x / y))
                   : op[1] == '/' ? json_real(floor(x / y)) : json_real(x / y);
            break;
        case '%':
            if (y == 0) { rc = rerr(n, "division by zero"); break; }
            if (ints) { /* Python's sign (the divisor's); adding yi to a remainder of the other sign cannot overflow */
                json_int_t m = yi == -1 ? 0 : xi % yi;
                *out = json_integer(m != 0 && (m < 0) != (yi < 0) ? m + yi : m);
            } else {
                double m = fmod(x, y);
                *out = json_real(m != 0 && (m < 0) != (y < 0) ? m + y : m);
            }
            break;
        case '<': *out = json_boolean(op[1] == '=' ? x <= y : x < y); break;
        case '>': *out = json_boolean(op[1] == '=' ? x >= y : x > y); break;
        default: rc = rerr(n, "operator '%s' on numbers", op);
        }
    } else if ((op[0] == '<' || op[0] == '>') && json_is_string(l) && json_is_string(r)) {
        int c = strcmp(json_string_value(l), json_string_value(r));
        *out = json_boolean(op[0] == '<' ? (op[1] ? c <= 0 : c < 0) : (op[1] ? c >= 0 : c > 0));
    } else if (!strcmp(op, "*") && json_is_string(l) && json_is_integer(r)) {
        tk_buf b = {0};
        size_t len = json_string_length(l);
        json_int_t times = len ? json_integer_value(r) : 0;
        if (times > 0 && (uint64_t)times > MAX_REPEAT / len) {
            rc = rerr(n, "string repetition of %zu bytes x %lld is longer than %zu bytes", len, (long long)times,
                      MAX_REPEAT);
            goto done;
        }
        for (json_int_t i = 0; i < times && !rc; i++) rc = tk_buf_put(&b, json_string_value(l), len);
        if (!rc) *out = json_stringn(b.p ? b.p : "", b.n);
        tk_buf_free(&b);
    } else {
        rc = rerr(n, "operator '%s' on these operand types", op);
    }
done:
    json_decref(l);
    json_decref(r);
    return rc;
}

/* *out: a new reference, or NULL for undefined */
static int eval(renv *e, const node *n, json_t **out)
{
    int rc = 0;
    *out = NULL;
    if (e->depth > MAX_DEPTH) return rerr(n, "expression too deep");
    if (++e->steps > MAX_STEPS) return rerr(n, "rendering takes more than %ld steps (a loop without end?)", MAX_STEPS);
    e->depth++;
    switch (n->kind) {
    case N_LIT: *out = n->lit ? json_incref(n->lit) : NULL; break;
    case N_VAR: *out = lookup(e, n->name); break;
    case N_ATTR: {
        json_t *o = NULL;
        if ((rc = eval(e, n->a, &o))) break;
        json_t *v = json_is_object(o) ? json_object_get(o, n->name) : NULL;
        *out = v ? json_incref(v) : NULL;
        json_decref(o);
        break;
    }
    case N_INDEX: rc = eval_index(e, n, out); break;
    case N_SLICE: rc = eval_slice(e, n, out); break;
    case N_CALL: rc = eval_call(e, n, out); break;
    case N_FILTER: rc = eval_filter(e, n, out); break;
    case N_TEST: rc = eval_test(e, n, out); break;
    case N_BIN: rc = eval_bin(e, n, out); break;
    case N_NOT: {
        json_t *v = NULL;
        if (!(rc = eval(e, n->a, &v))) *out = json_boolean(!truthy(v));
        json_decref(v);
        break;
    }
    case N_NEG: {
        json_t *v = NULL;
        if (!(rc = eval(e, n->a, &v))) {
            if (json_is_integer(v)) *out = json_integer(-json_integer_value(v));
            else if (json_is_real(v)) *out = json_real(-json_real_value(v));
            else rc = rerr(n, "negation of a value that is not a number");
        }
        json_decref(v);
        break;
    }
    case N_COND: {
        json_t *c = NULL;
        if ((rc = eval(e, n->b, &c))) break;
        bool t = truthy(c);
        json_decref(c);
        if (t) rc = eval(e, n->a, out);
        else if (n->c) rc = eval(e, n->c, out);
        else *out = json_string(""); /* jinja's undefined renders empty */
        break;
    }
    case N_LIST: case N_TUPLE: {
        json_t *arr = json_array();
        for (size_t i = 0; i < n->nkid && !rc; i++) {
            json_t *v = NULL;
            if (!(rc = eval(e, n->kid[i], &v))) json_array_append_new(arr, v ? v : json_null());
        }
        if (rc) json_decref(arr);
        else *out = arr;
        break;
    }
    case N_DICT: {
        json_t *obj = json_object();
        for (size_t i = 0; i + 1 < n->nkid && !rc; i += 2) {
            json_t *k = NULL, *v = NULL;
            if (!(rc = eval(e, n->kid[i], &k)) && !(rc = eval(e, n->kid[i + 1], &v))) {
                if (!json_is_string(k)) rc = rerr(n, "dict keys must be strings");
                else json_object_set_new(obj, json_string_value(k), v ? v : json_null()), v = NULL;
            }
            json_decref(k);
            json_decref(v);
        }
        if (rc) json_decref(obj);
        else *out = obj;
        break;
    }
    default: rc = rerr(n, "unexpected node");
    }
    e->depth--;
    return rc;
}

static int exec_for(renv *e, const node *n)
{
    json_t *it = NULL, *items = NULL;
    int rc = eval(e, n->a, &it);
    if (rc) return rc;
    if (json_is_array(it)) {
        items = json_incref(it);
    } else if (json_is_object(it)) { /* iterating a dict gives its keys */
        items = json_array();
        const char *k;
        json_t *v;
        json_object_foreach(it, k, v) json_array_append_new(items, json_string(k));
    } else if (json_is_string(it)) {
        items = json_array();
        const char *s = json_string_value(it);
        size_t sl = json_string_length(it);
        for (size_t i = 0; i < sl;) {
            int32_t cp;
            int k = tk_utf8_next(s + i, sl - i, &cp);
            json_array_append_new(items, json_stringn(s + i, (size_t)k));
            i += (size_t)k;
        }
    } else if (!it || json_is_null(it)) {
        items = json_array();
    } else {
        json_decref(it);
        return rerr(n, "for loop over a value that is not iterable");
    }
    json_decref(it);
    size_t len = json_array_size(items);
    if ((rc = push_scope(e))) goto done;
    for (size_t i = 0; i < len && !rc; i++) {
        json_t *sc = e->scope[e->nscope - 1];
        json_object_clear(sc);
        json_t *x = json_array_get(items, i);
        if (n->nparams == 1) {
            json_object_set(sc, n->params[0], x);
        } else {
            for (size_t k = 0; k < n->nparams; k++) {
                json_t *xv = json_array_get(x, k);
                json_object_set(sc, n->params[k], xv ? xv : json_null());
            }
        }
        json_t *loop = json_pack("{s:I, s:I, s:b, s:b, s:I, s:I, s:I}", "index0", (json_int_t)i, "index", (json_int_t)i + 1,
                                 "first", i == 0, "last", i + 1 == len, "length", (json_int_t)len, "revindex",
                                 (json_int_t)(len - i), "revindex0", (json_int_t)(len - i - 1));
        if (i > 0) json_object_set(loop, "previtem", json_array_get(items, i - 1));
        if (i + 1 < len) json_object_set(loop, "nextitem", json_array_get(items, i + 1));
        json_object_set_new(sc, "loop", loop);
        rc = exec(e, n->b);
        if (e->flow == 1) {
            e->flow = 0;
            break;
        }
        e->flow = 0;
    }
    pop_scope(e);
    if (!rc && len == 0 && n->c) rc = exec(e, n->c);
done:
    json_decref(items);
    return rc;
}

static int exec(renv *e, const node *n)
{
    int rc = 0;
    if (++e->steps > MAX_STEPS) return rerr(n, "rendering takes more than %ld steps (a loop without end?)", MAX_STEPS);
    switch (n->kind) {
    case N_SEQ:
        for (size_t i = 0; i < n->nkid && !rc && !e->flow; i++) rc = exec(e, n->kid[i]);
        return rc;
    case N_TEXT:
        return tk_buf_put(&e->out, json_string_value(n->lit), json_string_length(n->lit));
    case N_OUT: {
        json_t *v = NULL;
        if (!(rc = eval(e, n->a, &v))) rc = to_str(&e->out, v);
        json_decref(v);
        if (!rc && e->out.n > MAX_OUT) rc = rerr(n, "output too large");
        return rc;
    }
    case N_IF: {
        json_t *c = NULL;
        if ((rc = eval(e, n->a, &c))) return rc;
        bool t = truthy(c);
        json_decref(c);
        if (t) return exec(e, n->b);
        return n->c ? exec(e, n->c) : 0;
    }
    case N_FOR:
        if (e->depth > MAX_DEPTH) return rerr(n, "loops nested too deeply");
        e->depth++;
        rc = exec_for(e, n);
        e->depth--;
        return rc;
    case N_SET: {
        json_t *v = NULL;
        if ((rc = eval(e, n->a, &v))) return rc;
        if (n->name) {
            json_t *ns = lookup(e, n->params[0]);
            if (!json_is_object(ns)) rc = rerr(n, "'%s' is not a namespace", n->params[0]);
            else json_object_set(ns, n->name, v ? v : json_null());
            json_decref(ns);
        } else {
            json_object_set(e->scope[e->nscope - 1], n->params[0], v ? v : json_null());
        }
        json_decref(v);
        return rc;
    }
    case N_MACRO:
        json_object_set_new(e->macros, n->name, json_integer((json_int_t)(uintptr_t)n));
        return 0;
    case N_BREAK: e->flow = 1; return 0;
    case N_CONTINUE: e->flow = 2; return 0;
    default:
        return rerr(n, "unexpected statement");
    }
}

/* ---- entry point ----------------------------------------------------------------------------------------- */

int tk_jinja_render(char **out, const char *src, json_t *ctx)
{
    sparser sp;
    memset(&sp, 0, sizeof sp);
    renv e;
    memset(&e, 0, sizeof e);
    node *root = NULL;
    int rc;
    *out = NULL;
    if ((rc = split_segments(&sp.ss, src))) goto cleanup;
    if (!(root = node_new(N_SEQ, 1))) {
        rc = mtr_fail(MTR_ENOMEM, "out of memory");
        goto cleanup;
    }
    if ((rc = parse_body(&sp, root, NULL, NULL, NULL))) goto cleanup;
    if (!(e.macros = json_object()) || (rc = push_scope(&e))) {
        rc = rc ? rc : mtr_fail(MTR_ENOMEM, "out of memory");
        goto cleanup;
    }
    json_object_update(e.scope[0], ctx);
    if ((rc = push_scope(&e))) goto cleanup; /* template-level sets */
    if ((rc = exec(&e, root))) goto cleanup;
    if ((rc = tk_buf_reserve(&e.out, 0))) goto cleanup;
    *out = e.out.p;
    e.out.p = NULL;
cleanup:
    while (e.nscope) pop_scope(&e);
    free(e.scope);
    json_decref(e.macros);
    tk_buf_free(&e.out);
    node_free(root);
    for (size_t i = 0; i < sp.ss.n; i++) free(sp.ss.v[i].s);
    free(sp.ss.v);
    return rc;
}
