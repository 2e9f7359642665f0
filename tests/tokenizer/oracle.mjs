// oracle.mjs — the reference ids: @lenml/tokenizers (a JavaScript port of the Hugging Face tokenizers pipeline)
// loaded with the exact tokenizer.json / tokenizer_config.json of a model package. Chat items are rendered with
// @huggingface/jinja (the Jinja engine of transformers.js; the copy bundled in @lenml/tokenizers cannot parse
// Qwen3's template) with the variables apply_chat_template passes, then encoded without special tokens.
// Usage: node oracle.mjs NODE_MODULES MODEL TEXTS.jsonl ids|chat > out.jsonl
//   MODEL: a @lenml/tokenizer-MODEL package (qwen3, gptoss, ...), or a directory (a path holding a '/') with
//   tokenizer.json and tokenizer_config.json
//   ids:  {"ids": [...]} per text (add_special_tokens=false), or {"error": "..."}
//   chat: {"rendered": "...", "ids": [...]} per text as one user turn, add_generation_prompt=false,
//         enable_thinking=false
import fs from 'fs';
import path from 'path';
import {createRequire} from 'module';

const [nm, model, textsPath, mode] = process.argv.slice(2);
const require = createRequire(path.join(nm, 'x.js'));
const {TokenizerLoader} = require('@lenml/tokenizers');
const dir = model.includes('/') ? model : path.join(nm, '@lenml', 'tokenizer-' + model, 'models');
const tjson = JSON.parse(fs.readFileSync(path.join(dir, 'tokenizer.json'), 'utf8'));
const tcfg = JSON.parse(fs.readFileSync(path.join(dir, 'tokenizer_config.json'), 'utf8'));
const tok = TokenizerLoader.fromPreTrained({tokenizerJSON: tjson, tokenizerConfig: tcfg});
const texts = fs.readFileSync(textsPath, 'utf8').split('\n').filter(l => l).map(l => JSON.parse(l));

let template = null;
if (mode === 'chat') {
    const {Template} = await import(path.join(nm, '@huggingface', 'jinja', 'dist', 'index.js'));
    template = new Template(tcfg.chat_template);
}
const tokenStr = t => (t && typeof t === 'object') ? t.content : t;
const out = [];
for (const {text} of texts) {
    try {
        if (mode === 'chat') {
            const rendered = template.render({
                messages: [{role: 'user', content: text}], add_generation_prompt: false, enable_thinking: false,
                bos_token: tokenStr(tcfg.bos_token), eos_token: tokenStr(tcfg.eos_token),
            });
            out.push(JSON.stringify({rendered, ids: tok.encode(rendered, {add_special_tokens: false})}));
        } else {
            out.push(JSON.stringify({ids: tok.encode(text, {add_special_tokens: false})}));
        }
    } catch (e) {
        out.push(JSON.stringify({error: String(e.message || e)}));
    }
}
process.stdout.write(out.join('\n') + '\n');
