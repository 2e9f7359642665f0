// roundtrip.mjs — decode(encode(x)) == x: compare the JSON strings `tokenize --decode --jsonl` printed with the
// texts, after the tokenizer's normalizer (NFC for Qwen3; none for gpt-oss and DeepSeek-V3), which byte-level
// BPE cannot undo. Usage: node roundtrip.mjs NAME TEXTS.jsonl DECODED.jsonl nfc|none
import fs from 'fs';

const [name, textsPath, decPath, norm] = process.argv.slice(2);
const lines = p => fs.readFileSync(p, 'utf8').split('\n').slice(0, -1);
const texts = lines(textsPath).map(l => JSON.parse(l));
const dec = lines(decPath).map(l => JSON.parse(l));
let same = 0;
const bad = [];
texts.forEach((t, i) => {
    const want = norm === 'nfc' ? t.text.normalize('NFC') : t.text;
    if (dec[i] === want) same++;
    else bad.push(t.id);
});
if (!bad.length && dec.length === texts.length) console.log(`ok ${name}: ${same}/${texts.length} decode back to the text`);
else {
    console.log(`not ok ${name}: ${texts.length - same}/${texts.length} differ (${bad.slice(0, 5).join(', ')})`);
    process.exitCode = 1;
}
