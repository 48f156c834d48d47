// Validates an AsyncAPI document (JSON or YAML) with the official AsyncAPI parser and its
// default ruleset: `node validate.mjs FILE`. Prints every diagnostic; exits 1 when any is an
// error (or the parser returns no document), 2 on wrong usage. Warnings are printed, not
// fatal: they are advice (recommended fields), not breaches of the specification.
import { Parser, fromFile, DiagnosticSeverity } from '@asyncapi/parser';
import { resolve } from 'node:path';

const file = process.argv[2];
if (!file || process.argv.length > 3) {
    console.error('usage: node validate.mjs FILE');
    process.exit(2);
}

const names = {
    [DiagnosticSeverity.Error]: 'error',
    [DiagnosticSeverity.Warning]: 'warning',
    [DiagnosticSeverity.Information]: 'info',
    [DiagnosticSeverity.Hint]: 'hint',
};

const parser = new Parser();
const { document, diagnostics } = await fromFile(parser, resolve(file)).parse();
for (const d of diagnostics) {
    const where = d.path.length ? d.path.join('/') : '(document)';
    console.log(`${names[d.severity] ?? d.severity} ${d.code} at ${where}: ${d.message}`);
}
const errors = diagnostics.filter((d) => d.severity === DiagnosticSeverity.Error).length;
if (errors > 0 || !document) {
    console.log(`${file}: invalid AsyncAPI document (${errors} errors)`);
    process.exit(1);
}
console.log(`${file}: valid AsyncAPI ${document.version()} document (${diagnostics.length} diagnostics, none an error)`);
