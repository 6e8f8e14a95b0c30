// Where each field of a JSON text is: the line of every path, so that the root's validation
// errors ({path: "applications[0].microservices[0].model.objective", message}) can be shown
// next to the field they name. A small JSON scanner (strings, numbers, literals, objects,
// arrays) that records, for each member, the line of its key and, for each array element,
// the line where it starts. Paths use the root's notation: `a.b[0].c`.
"use strict";

function slaFieldLines(text) {
  const lines = new Map();
  let i = 0;
  let line = 1;
  const n = text.length;

  function skip() {
    while (i < n) {
      const c = text[i];
      if (c === "\n") { line += 1; i += 1; } else if (c === " " || c === "\t" || c === "\r") { i += 1; } else { break; }
    }
  }
  function string() {  // at the opening quote; returns the decoded-enough key text
    let out = "";
    i += 1;
    while (i < n && text[i] !== '"') {
      if (text[i] === "\\") { out += text[i + 1] || ""; i += 2; continue; }
      if (text[i] === "\n") { line += 1; }
      out += text[i];
      i += 1;
    }
    i += 1;
    return out;
  }
  function value(path) {
    skip();
    if (!lines.has(path)) { lines.set(path, line); }
    const c = text[i];
    if (c === "{") {
      i += 1;
      for (;;) {
        skip();
        if (text[i] === "}") { i += 1; return; }
        if (text[i] !== '"') { throw new Error("bad key"); }
        const keyLine = line;
        const key = string();
        const child = path ? path + "." + key : key;
        lines.set(child, keyLine);
        skip();
        if (text[i] !== ":") { throw new Error("expected :"); }
        i += 1;
        value(child);
        skip();
        if (text[i] === ",") { i += 1; continue; }
        if (text[i] === "}") { i += 1; return; }
        throw new Error("expected , or }");
      }
    } else if (c === "[") {
      i += 1;
      let k = 0;
      for (;;) {
        skip();
        if (text[i] === "]") { i += 1; return; }
        value(path + "[" + k + "]");
        k += 1;
        skip();
        if (text[i] === ",") { i += 1; continue; }
        if (text[i] === "]") { i += 1; return; }
        throw new Error("expected , or ]");
      }
    } else if (c === '"') {
      string();
    } else {
      while (i < n && !",}] \t\r\n".includes(text[i])) { i += 1; }
    }
  }
  try { value(""); } catch (e) { /* a partial map is still useful */ }
  return lines;
}

// The line of `path`, or of its longest prefix that exists (a missing required field is shown
// at the object that lacks it); 1 when nothing matches.
function slaLineOf(lines, path) {
  let p = path || "";
  for (;;) {
    if (lines.has(p)) { return lines.get(p); }
    const cut = Math.max(p.lastIndexOf("."), p.lastIndexOf("["));
    if (cut <= 0) { return lines.get("") || 1; }
    p = p.slice(0, cut);
  }
}

// The line and column of a JSON.parse failure, from the message of V8's SyntaxError.
function slaSyntaxLine(text, error) {
  const m = /position (\d+)/.exec(String(error && error.message));
  if (!m) { return 1; }
  return text.slice(0, Number(m[1])).split("\n").length;
}
