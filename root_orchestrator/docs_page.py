# ruff: noqa: E501  (one static HTML page, kept as written)
"""The ``/api/docs`` page: one static HTML file that fetches ``/api/openapi.json`` and lists its
routes (method, path, summary, who may call it, parameters and answers). Self-contained: no
CDN or vendored library, so it works on an air-gapped root. An optional token field sends
``Authorization: Bearer`` on a "try" GET."""

DOCS_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Treeline root API</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:2em;max-width:70em;color:#222}
h1{font-size:1.4em} .op{border:1px solid #ddd;border-radius:4px;margin:.4em 0;padding:.4em .6em}
.m{display:inline-block;min-width:4.5em;font-weight:bold;font-family:monospace}
.GET{color:#0a6}.POST{color:#06c}.PUT{color:#a60}.DELETE{color:#c22}
code{font-family:monospace} .sec{float:right;font-size:.85em;color:#666}
details>div{margin:.3em 0 .3em 5em;font-size:.9em;color:#444} pre{white-space:pre-wrap;background:#f6f6f6;padding:.4em}
</style></head><body>
<h1 id="title">Treeline root API</h1>
<p id="desc"></p>
<p><label>Bearer token <input id="token" size="60" placeholder="from POST /api/auth/login"></label></p>
<div id="ops">Loading /api/openapi.json ...</div>
<script>
"use strict";
function el(tag, cls, text){const e=document.createElement(tag); if(cls)e.className=cls; if(text!==undefined)e.textContent=text; return e;}
function who(op, doc){
  const sec = op.security !== undefined ? op.security : (doc.security || []);
  if (sec.length === 0) return "public";
  return op["x-treeline-access"] || "bearer token";
}
async function tryGet(path, out){
  const headers = {};
  const token = document.getElementById("token").value.trim();
  if (token) headers["Authorization"] = "Bearer " + token;
  const r = await fetch(path, {headers});
  out.textContent = r.status + " " + (await r.text()).slice(0, 4000);
}
fetch("openapi.json").then(r => r.json()).then(doc => {
  document.getElementById("title").textContent = doc.info.title + " " + doc.info.version;
  document.getElementById("desc").textContent = (doc.info.description || "").split("\\n")[0];
  const ops = document.getElementById("ops"); ops.textContent = "";
  for (const path of Object.keys(doc.paths).sort()) {
    for (const [method, op] of Object.entries(doc.paths[path])) {
      const box = el("details", "op"); const head = el("summary");
      head.append(el("span", "m " + method.toUpperCase(), method.toUpperCase()), el("code", "", path),
                  document.createTextNode("  " + (op.summary || "")), el("span", "sec", who(op, doc)));
      box.append(head);
      const params = (op.parameters || []).map(p => p.name + " (" + p.in + ")").join(", ");
      if (params) box.append(el("div", "", "parameters: " + params));
      box.append(el("div", "", "answers: " + Object.keys(op.responses || {}).join(", ")));
      if (method === "get" && !path.includes("{")) {
        const out = el("pre"); const b = el("button", "", "try");
        b.onclick = () => tryGet(path, out).catch(e => { out.textContent = String(e); });
        const d = el("div"); d.append(b, out); box.append(d);
      }
      ops.append(box);
    }
  }
}).catch(e => { document.getElementById("ops").textContent = "cannot load openapi.json: " + e; });
</script></body></html>
"""
