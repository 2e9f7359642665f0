// compare.mjs — compare the ids moetrace-capture tokenize printed (one space-separated line per text) with the
// oracle's JSONL, text by text. Prints one TAP-style line: "ok NAME: N/N identical" or "not ok NAME: ..." with
// the first differing texts (id, position, the tokens around it). Exit 0 when all match.
// Usage: node compare.mjs NAME TEXTS.jsonl ORACLE.jsonl GOT.txt [field]   (field: ids (default))
import fs from 'fs';

const [name, textsPath, oraclePath, gotPath] = process.argv.slice(2);
const lines = p => fs.readFileSync(p, 'utf8').split('\n').slice(0, -1);
const texts = lines(textsPath).map(l => JSON.parse(l));
const exp = lines(oraclePath).map(l => JSON.parse(l));
const got = lines(gotPath);
let same = 0;
const bad = [];
for (let i = 0; i < texts.length; i++) {
    const e = exp[i] && exp[i].ids ? exp[i].ids.join(' ') : '(oracle error)';
    const g = got[i] ?? '(missing)';
    if (e === g) { same++; continue; }
    const ea = e.split(' '), ga = g.split(' ');
    let k = 0;
    while (k < ea.length && ea[k] === ga[k]) k++;
    bad.push(`${texts[i].id} at token ${k}: want ${ea.slice(k, k + 4).join(' ')} got ${ga.slice(k, k + 4).join(' ')}`);
}
if (got.length !== texts.length) bad.unshift(`${got.length} output lines for ${texts.length} texts`);
if (!bad.length) {
    console.log(`ok ${name}: ${same}/${texts.length} identical`);
} else {
    console.log(`not ok ${name}: ${texts.length - same}/${texts.length} differ; ${bad.slice(0, 3).join('; ')}`);
    process.exitCode = 1;
}
