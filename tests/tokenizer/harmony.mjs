// harmony.mjs — the reference rendering of a chat template with @huggingface/jinja (its strftime_now, the clock
// pinned to the given time; run with TZ=UTC) and the ids @lenml/tokenizers gives the rendered text (no special tokens added), for the
// gpt-oss tokenizer; one {"rendered", "ids"} or {"error"} line per input line ({"messages": [...]}).
// Usage: node harmony.mjs NODE_MODULES TEMPLATE.jinja CHATS.jsonl EPOCH_SECONDS > out.jsonl
import fs from 'fs';
import path from 'path';
import {createRequire} from 'module';

const [nm, tplPath, chatsPath, epoch] = process.argv.slice(2);
const require = createRequire(path.join(nm, 'x.js'));
const {TokenizerLoader} = require('@lenml/tokenizers');
const dir = path.join(nm, '@lenml', 'tokenizer-gptoss', 'models');
const tok = TokenizerLoader.fromPreTrained({
    tokenizerJSON: JSON.parse(fs.readFileSync(path.join(dir, 'tokenizer.json'), 'utf8')),
    tokenizerConfig: JSON.parse(fs.readFileSync(path.join(dir, 'tokenizer_config.json'), 'utf8')),
});
const {Template} = await import(path.join(nm, '@huggingface', 'jinja', 'dist', 'index.js'));
const template = new Template(fs.readFileSync(tplPath, 'utf8'));
const when = Number(epoch) * 1000;
const RealDate = Date;
globalThis.Date = class extends RealDate {
    constructor(...a) { if (a.length) super(...a); else super(when); }
    static now() { return when; }
};
const out = [];
for (const line of fs.readFileSync(chatsPath, 'utf8').split('\n').filter(l => l)) {
    try {
        const rendered = template.render({messages: JSON.parse(line).messages, add_generation_prompt: true,
                                          bos_token: '<|startoftext|>', eos_token: '<|return|>'});
        out.push(JSON.stringify({rendered, ids: tok.encode(rendered, {add_special_tokens: false})}));
    } catch (e) {
        out.push(JSON.stringify({error: String(e.message || e)}));
    }
}
process.stdout.write(out.join('\n') + '\n');
