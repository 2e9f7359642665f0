// bench_oracle.mjs — encode throughput of the JavaScript oracle (@lenml/tokenizers) on the texts, one thread:
// prints MB/s of UTF-8 (after one warm-up pass, at least 3 passes and 2 s). Used by tests/bench/bench_tokenizer.c.
// Usage: node bench_oracle.mjs NODE_MODULES MODEL TEXTS.jsonl
import fs from 'fs';
import path from 'path';
import {createRequire} from 'module';

const [nm, model, textsPath] = process.argv.slice(2);
const require = createRequire(path.join(nm, 'x.js'));
const {TokenizerLoader} = require('@lenml/tokenizers');
const dir = path.join(nm, '@lenml', 'tokenizer-' + model, 'models');
const tok = TokenizerLoader.fromPreTrained({
    tokenizerJSON: JSON.parse(fs.readFileSync(path.join(dir, 'tokenizer.json'), 'utf8')),
    tokenizerConfig: JSON.parse(fs.readFileSync(path.join(dir, 'tokenizer_config.json'), 'utf8')),
});
const texts = fs.readFileSync(textsPath, 'utf8').split('\n').filter(l => l).map(l => JSON.parse(l).text);
const bytes = texts.reduce((s, t) => s + Buffer.byteLength(t), 0);
for (const t of texts) tok.encode(t, {add_special_tokens: false});
let reps = 0;
const t0 = process.hrtime.bigint();
let el = 0;
do {
    for (const t of texts) tok.encode(t, {add_special_tokens: false});
    reps++;
    el = Number(process.hrtime.bigint() - t0) / 1e9;
} while (reps < 3 || el < 2);
console.log((bytes * reps / el / 1e6).toFixed(3));
