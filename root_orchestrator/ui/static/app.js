// The operator dashboard: one Alpine.js component over the root's REST API. It signs in with
// POST /api/auth/login (token in this tab's sessionStorage, refreshed on a 401), polls
// GET /api/ui/overview every `period` ms and, while a deployment is open, its
// GET /api/ui/service/<id>. Nothing here decides anything: the figures are the root's and the
// clusters'; the page only draws them.
"use strict";

const PERIOD_MS = 1900;  // under the 2 s goal with the timer's slack; telemetry arrives every 2 s
const NODE_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
                      "#bcbd22", "#7f7f7f"];

function treeline() {
  return {
    tabs: [{id: "fleet", label: "Fleet"}, {id: "deployments", label: "Deployments"},
           {id: "registry", label: "Registry"}, {id: "submit", label: "Submit SLA"}],
    tab: "fleet",
    token: sessionStorage.getItem("treeline.token") || "",
    refresh: sessionStorage.getItem("treeline.refresh") || "",
    username: sessionStorage.getItem("treeline.user") || "",
    form: {username: "", password: ""},
    loginError: "",
    error: "",
    overview: {clusters: [], nodes: [], services: [], now: 0},
    updatedAt: 0,
    now: Date.now(),
    stale: false,
    selected: null,
    detail: null,
    charts: null,
    trainingCharts: null,
    colours: {},
    models: [],
    model: null,
    sla: "",
    slaErrors: [],
    slaResult: "",
    plan: [],
    gone: "",
    scrollTop: 0,
    lineHeight: 18,
    timer: null,

    start() {
      this.charts = new DeploymentCharts();
      this.trainingCharts = new TrainingCharts();
      this.route();
      window.addEventListener("hashchange", () => this.route());
      if (this.token) { this.poll(); }
      setInterval(() => { this.now = Date.now(); this.stale = this.token && this.now - this.updatedAt > 3 * PERIOD_MS; }, 1000);
    },

    // -- signing in --------------------------------------------------------------------------
    async login() {
      this.loginError = "";
      const r = await fetch("/api/auth/login", {method: "POST", headers: {"Content-Type": "application/json"},
                                                body: JSON.stringify(this.form)});
      const body = await r.json().catch(() => ({}));
      if (!r.ok) { this.loginError = (body.error && body.error.message) || ("sign-in failed: HTTP " + r.status); return; }
      this.token = body.token; this.refresh = body.refresh_token || ""; this.username = this.form.username;
      sessionStorage.setItem("treeline.token", this.token);
      sessionStorage.setItem("treeline.refresh", this.refresh);
      sessionStorage.setItem("treeline.user", this.username);
      this.form.password = "";
      this.loginError = "";
      this.poll();
      this.route();
    },
    logout() {
      sessionStorage.clear();
      this.token = ""; this.refresh = ""; this.detail = null; this.selected = null;
      if (this.timer) { clearTimeout(this.timer); this.timer = null; }
      this.destroyCharts();
    },
    destroyCharts() { this.charts.destroy(); this.trainingCharts.destroy(); },
    async api(method, path, body) {
      for (let attempt = 0; attempt < 2; attempt += 1) {
        const r = await fetch(path, {method, headers: {"Authorization": "Bearer " + this.token,
                                                       "Content-Type": "application/json"},
                                     body: body === undefined ? undefined : JSON.stringify(body)});
        if (r.status === 401 && attempt === 0 && await this.renew()) { continue; }
        if (r.status === 401) {
          this.logout();
          this.loginError = "your session expired or was refused: sign in again";
          throw new Error("signed out");
        }
        const text = await r.text();
        let parsed = null;
        try { parsed = text ? JSON.parse(text) : null; } catch (e) { parsed = {error: {message: text}}; }
        return {ok: r.ok, status: r.status, body: parsed};
      }
      return {ok: false, status: 401, body: null};
    },
    async renew() {
      if (!this.refresh) { return false; }
      const r = await fetch("/api/auth/refresh", {method: "POST", headers: {"Authorization": "Bearer " + this.refresh}});
      if (!r.ok) { return false; }
      this.token = (await r.json()).token;
      sessionStorage.setItem("treeline.token", this.token);
      return true;
    },

    // -- polling -----------------------------------------------------------------------------
    async poll() {
      if (this.timer) { clearTimeout(this.timer); }
      const started = Date.now();  // a fixed rate: the next poll is due PERIOD_MS after this one started
      try {
        const r = await this.api("GET", "/api/ui/overview");
        if (r.ok) { this.overview = r.body; this.updatedAt = Date.now(); this.error = ""; }
        else { this.error = (r.body && r.body.error && r.body.error.message) || ("HTTP " + r.status); }
        if (this.selected) { await this.loadDetail(); }
      } catch (e) {
        const text = String(e.message || e);
        this.error = /fetch|network/i.test(text) ? "the root is not reachable (" + text + "); retrying" : text;
      }
      if (this.token) { this.timer = setTimeout(() => this.poll(), Math.max(250, PERIOD_MS - (Date.now() - started))); }
    },
    // #fleet, #deployments[/<service id>], #registry[/<model>], #submit: reload-proof, linkable
    route() {
      const [tab, ref] = decodeURIComponent(location.hash.replace("#", "")).split("/");
      if (!this.tabs.some(t => t.id === tab)) { return; }
      this.tab = tab;
      if (!this.token) { return; }
      if (tab === "deployments" && ref && ref !== this.selected) { this.select(ref); }
      if (tab === "registry") { this.loadModels().then(() => { if (ref && ref !== this.model?.name) { this.selectModel(ref); } }); }
    },
    show(id) {
      this.tab = id;
      const ref = id === "deployments" ? this.selected : id === "registry" ? this.model?.name : null;
      history.replaceState(null, "", "#" + id + (ref ? "/" + encodeURIComponent(ref) : ""));
      if (id === "registry") { this.loadModels(); }
    },
    updatedText() {
      if (!this.updatedAt) { return "connecting…"; }
      return "updated " + Math.max(0, Math.round((this.now - this.updatedAt) / 1000)) + " s ago";
    },
    nodesSummary() {
      const online = this.overview.nodes.filter(n => n.online).length;
      return online + " online of " + this.overview.nodes.length;
    },

    // -- deployments -------------------------------------------------------------------------
    async select(id) {
      if (this.selected !== id) { this.destroyCharts(); }
      this.selected = id;
      this.gone = "";
      history.replaceState(null, "", "#deployments/" + encodeURIComponent(id));
      await this.loadDetail();
    },
    async loadDetail() {
      const id = this.selected;
      const r = await this.api("GET", "/api/ui/service/" + encodeURIComponent(id));
      if (r.status === 404) {
        const name = (this.detail && this.detail.service && this.detail.service.microservice_name) || id;
        this.gone = `deployment ${name} is gone (deleted, or not yours)`;
      }
      if (!r.ok) {
        if (r.status !== 404) { this.error = "deployment " + id + ": " + ((r.body && r.body.error && r.body.error.message) || ("HTTP " + r.status)); return; }
        this.detail = null; this.selected = null; this.destroyCharts();
        history.replaceState(null, "", "#deployments");
        return;
      }
      this.detail = r.body;
      await this.$nextTick();
      if (this.detail.training) {  // a training service: rounds over the round number, no stages
        this.charts.destroy();
        this.trainingCharts.update(id, this.detail.training.rounds || []);
      } else {
        this.trainingCharts.destroy();
        this.charts.update(this.detail, id => this.colour(id));
      }
    },
    // a node's colour: its place among every node id known (sorted), so every tab agrees
    colour(nodeId) {
      const ids = new Set(this.overview.nodes.map(n => n.node_id));
      ((this.detail && this.detail.strip && this.detail.strip.stages) || []).forEach(s => ids.add(s.node_id));
      ids.add(nodeId);
      return NODE_COLOURS[Array.from(ids).sort().indexOf(nodeId) % NODE_COLOURS.length];
    },
    async deleteApplication() {
      const service = this.detail && this.detail.service;
      if (!service || !confirm(`Delete application ${service.application_id} and all its services?`)) { return; }
      const r = await this.api("DELETE", "/api/application/" + encodeURIComponent(service.application_id));
      if (!r.ok) { this.error = (r.body && r.body.error && r.body.error.message) || ("HTTP " + r.status); return; }
      this.gone = `application deleted (${(r.body.services || []).length} service(s))`;
      this.detail = null; this.selected = null; this.destroyCharts();
      await this.poll();
    },
    stripSvg() {
      const strip = this.detail && this.detail.strip;
      if (!strip || !strip.stages.length) { return "<p class='hint'>no placement yet</p>"; }
      const W = 900, H = 86, top = 22, h = 30;
      const total = Math.max(1, strip.total_ops || strip.stages.length);
      const parts = [`<svg id="placement-strip" viewBox="0 0 ${W} ${H}" width="${W}" height="${H}" ` +
                     `style="max-width:100%" role="img" aria-label="placement strip">`];
      strip.stages.forEach((s, k) => {
        const start = s.start ?? k, end = s.end ?? k + 1;
        const x = (start / total) * W, w = Math.max(2, ((end - start) / total) * W);
        const fill = this.colour(s.node_id);
        parts.push(`<rect class="stage" data-node="${esc(s.node_name)}" data-stage="${s.index}" x="${x}" y="${top}" ` +
                   `width="${w}" height="${h}" fill="${fill}"><title>stage ${s.index} on ${esc(s.node_name)}: ` +
                   `operators ${start}–${end}, ${ms(s.predicted_compute_ms)} predicted</title></rect>`);
        parts.push(`<text x="${x + 4}" y="${top + 20}" class="strip-label">${esc(s.node_name)}</text>`);
        if (k > 0) {  // the cut: what the stage before sends (its outputs and their bytes)
          const sender = strip.stages[k - 1];
          parts.push(`<line x1="${x}" x2="${x}" y1="${top - 14}" y2="${top + h + 6}" class="cut"/>`);
          parts.push(`<text x="${x + 3}" y="${top - 6}" class="cut-label" data-cut="${k}">` +
                     `${esc((sender.outputs || []).join(", "))} ${bytes(sender.cut_bytes)}</text>`);
        }
      });
      for (let op = 0; op <= total; op += Math.max(1, Math.ceil(total / 10))) {
        parts.push(`<text x="${(op / total) * W}" y="${top + h + 16}" class="tick">${op}</text>`);
      }
      parts.push("</svg>");
      return parts.join("");
    },
    placementText() {
      const s = this.detail && this.detail.strip;
      if (!s) { return ""; }
      const p = s.predicted || {};
      return `generation ${s.generation}, strategy ${s.strategy}, ${s.total_ops} operators, predicted ` +
             `${ms(p.latency_ms)} end to end, ${p.throughput_rps ?? "–"} req/s pipelined`;
    },
    e2eText() {
      const m = this.detail && this.detail.measured;
      const p = ((this.detail && this.detail.strip && this.detail.strip.predicted) || {}).latency_ms;
      if (!m || m.e2e_ms_mean == null) { return "End to end: not measured yet (no request answered)."; }
      return `End to end at the entry: ${ms(m.e2e_ms_mean)} mean over ${m.e2e_requests} requests ` +
             `(links and queues included), ${ms(p)} predicted.`;
    },
    energyText() {
      const m = this.detail && this.detail.measured;
      if (!m || m.energy_mj == null) { return "Energy per inference: not measured yet (needs requests and node power)."; }
      return `Energy per inference: ${m.energy_mj} mJ measured (node power × measured compute` +
             `${m.energy_estimated ? "; power estimated from the profile" : ""}), ` +
             `${(this.detail.strip.predicted || {}).energy_mj ?? "–"} mJ predicted.`;
    },
    explanationRows() {
      const ex = (this.detail && this.detail.explanation) || {};
      const names = Object.assign({}, ex.node_names || {});
      (this.detail?.strip?.stages || []).forEach(s => { names[s.node_id] = s.node_name; });
      this.overview.nodes.forEach(n => { names[n.node_id] = names[n.node_id] || n.name; });
      const reasons = Object.assign({}, ex.filtered || {}, ex.filtered_or_unused || {});
      const ids = new Set(Object.keys(ex.scores || {}).concat(Object.keys(reasons)));
      return Array.from(ids).map(id => {
        const score = (ex.scores || {})[id] || {};
        const plugins = Object.entries(score.by_plugin || {}).map(([k, v]) => k + " " + v).join(", ");
        const reason = reasons[id];
        return {node: id, name: names[id] || id, total: score.total ?? "–", plugins,
                reason: Array.isArray(reason) ? reason.join("; ") : (reason || "used")};
      }).sort((a, b) => (Number(b.total) || -1) - (Number(a.total) || -1));
    },
    // -- a training service (detail.training: GET /api/ui/service/<id>, root_orchestrator/ui_training.py)
    trainingText() {
      const t = this.detail && this.detail.training;
      if (!t) { return ""; }
      const s = t.spec || {};
      const dp = s.differential_privacy ? `, differential privacy (${s.differential_privacy.side || "client"} side)` : "";
      return `Flower ${s.strategy}, round ${t.progress.round} of ${s.rounds ?? "?"}, data ${s.data || "–"}, ` +
             `from ${s.model || "–"}${s.trainable === "head" ? " (head only)" : ""}${dp}`;
    },
    // one row per node: the server, each client, each rejected node with its reason
    trainingPlacementRows() {
      const p = this.detail && this.detail.training && this.detail.training.placement;
      if (!p) { return []; }
      const lost = new Set(((this.detail.training.clients_lost) || []).map(c => c.node_id));
      const rows = [];
      if (p.server) { rows.push({node_id: p.server.node_id, name: p.server.name, role: "server", note: "Flower SuperLink + ServerApp (aggregates)"}); }
      p.clients.forEach(c => rows.push({node_id: c.node_id, name: c.name, role: "client",
                                        note: lost.has(c.node_id) ? "lost during training" : "SuperNode + ClientApp on its local data"}));
      p.rejected.forEach(r => rows.push({node_id: r.node_id, name: r.name, role: "not used", reason: r.reason, note: r.message}));
      return rows;
    },
    roundValue(v, digits = 3) { return v == null ? "–" : Number(v).toFixed(digits); },
    eventText(e) {
      const bits = [];
      if (e.cause) { bits.push(e.cause); }
      if (e.message) { bits.push(e.message); }
      if (e.nodes && e.nodes.length) { bits.push("on " + e.nodes.join(", ")); }
      if (e.old_cost_ms != null || e.new_cost_ms != null) { bits.push(`${ms(e.old_cost_ms)} → ${ms(e.new_cost_ms)}`); }
      if (e.detail) { bits.push(String(e.detail)); }
      return bits.join(" · ");
    },
    eventClass(kind) {
      if (/fail|blocked/.test(kind)) { return "ev-bad"; }
      if (/replan|moved|failover|rollback/.test(kind)) { return "ev-replan"; }
      if (/rollout|canary|promot/.test(kind)) { return "ev-rollout"; }
      return "";
    },
    trainingDone(status, detail) {  // a training service ends DELETED once its result is registered
      return status === "DELETED" && /^training done/.test(detail || "");
    },
    statusLabel(status, detail) { return this.trainingDone(status, detail) ? "DONE" : status; },
    statusClass(status, detail) {
      if (status === "RUNNING" || this.trainingDone(status, detail)) { return "ok"; }
      if (status === "FAILED") { return "bad"; }
      return "warn";
    },

    // -- registry ----------------------------------------------------------------------------
    async loadModels() {
      const r = await this.api("GET", "/api/models/");
      if (r.ok) { this.models = (r.body && r.body.models) || r.body || []; }
    },
    async selectModel(name) {
      const [versions, aliases] = await Promise.all([
        this.api("GET", "/api/models/" + encodeURIComponent(name) + "/versions"),
        this.api("GET", "/api/models/" + encodeURIComponent(name) + "/aliases")]);
      const list = (versions.ok && versions.body.versions) || [];
      const byVersion = {};
      const al = (aliases.ok && aliases.body.aliases) || {};
      Object.entries(al).forEach(([alias, v]) => {
        const n = typeof v === "object" && v ? v.version : v;
        (byVersion[n] = byVersion[n] || []).push(alias);
      });
      list.forEach(v => { v.aliases = byVersion[v.version] || v.aliases || []; });
      const profiles = await Promise.all(list.map(v => this.api("GET", "/api/models/" + encodeURIComponent(name) +
                                                               "/versions/" + v.version + "/profiles")));
      list.forEach((v, k) => {
        const found = (profiles[k].ok && profiles[k].body && profiles[k].body.profiles) || {};
        v.profiled = Object.entries(found).map(([cls, p]) => cls + " " +
          ms(Object.values((p && p.op_ms) || {}).reduce((a, b) => a + Number(b || 0), 0))).join(", ");
      });
      this.model = {name, versions: list};
      history.replaceState(null, "", "#registry/" + encodeURIComponent(name));
      this.loadModels();  // the list's aliases may have moved since
    },
    aliasText(aliases) {
      if (!aliases) { return ""; }
      if (Array.isArray(aliases)) { return aliases.join(", "); }
      return Object.entries(aliases).map(([k, v]) => k + " → v" + (typeof v === "object" && v ? v.version : v)).join(", ");
    },
    lineageText(lineage) {
      if (!lineage || !lineage.parent) { return "–"; }
      return `${lineage.operation} of ${lineage.parent.name} v${lineage.parent.version}`;
    },
    metricsText(metrics) {
      const fmt = v => (typeof v === "number" && !Number.isInteger(v) ? Number(v.toPrecision(4)) : v);
      return Object.entries(metrics || {}).map(([cls, m]) => cls + ": " +
        Object.entries(m || {}).map(([k, v]) => k + " " + fmt(v)).join(", ")).join(" | ") || "–";
    },
    lineageSvg() {
      const versions = (this.model && this.model.versions) || [];
      if (!versions.length) { return ""; }
      const W = 200, H = 56, pos = {};
      const depth = v => { let d = 0, cur = v; const seen = new Set();
        while (cur && cur.lineage && cur.lineage.parent && !seen.has(cur.version)) {
          seen.add(cur.version);
          const p = cur.lineage.parent; if (p.name !== this.model.name) { d += 1; break; }
          cur = versions.find(x => x.version === p.version); d += 1; }
        return d; };
      const columns = {};
      versions.forEach(v => { const d = depth(v); columns[d] = (columns[d] || 0) + 1; pos[v.version] = [d, columns[d] - 1]; });
      const cols = Math.max(...Object.keys(columns).map(Number)) + 1;
      const rows = Math.max(...Object.values(columns));
      const out = [`<svg viewBox="0 0 ${cols * W + 20} ${rows * H + 10}" width="${cols * W + 20}" role="img" aria-label="lineage">`];
      versions.forEach(v => {
        const p = v.lineage && v.lineage.parent;
        if (p && p.name === this.model.name && pos[p.version]) {
          const [a, b] = pos[p.version], [c, d] = pos[v.version];
          out.push(`<line x1="${a * W + 110}" y1="${b * H + 22}" x2="${c * W + 10}" y2="${d * H + 22}" class="edge"/>`);
          out.push(`<text x="${a * W + 114}" y="${d * H + 16}" class="tick">${esc(v.lineage.operation)}</text>`);
        }
      });
      versions.forEach(v => {
        const [c, d] = pos[v.version];
        out.push(`<g class="version" data-version="${v.version}"><rect x="${c * W + 10}" y="${d * H + 6}" width="100" height="32" rx="5"/>` +
                 `<text x="${c * W + 18}" y="${d * H + 27}">v${v.version} ${esc((v.aliases || []).join(","))}</text></g>`);
      });
      out.push("</svg>");
      return out.join("");
    },

    // -- the SLA form ------------------------------------------------------------------------
    async loadExample() {
      const r = await fetch("/ui/examples/mobilenet_v2.json");
      this.sla = await r.text();
      this.slaErrors = []; this.slaResult = ""; this.plan = [];
    },
    upload(event) {
      const file = event.target.files[0];
      if (!file) { return; }
      if (file.size > 1048576) {  // the root's JSON body limit (treeline_common.http.JSON_BODY_LIMIT)
        this.slaErrors = [{path: "(file)", message: `${bytes(file.size)} is over the 1 MiB limit of an SLA`, line: 1}];
        event.target.value = "";
        return;
      }
      file.text().then(text => { this.sla = text; this.slaErrors = []; this.slaResult = ""; });
    },
    gutterText() {
      const count = Math.max(1, this.sla.split("\n").length);
      return Array.from({length: count}, (_, k) => String(k + 1)).join("\n");
    },
    syncScroll() {
      this.scrollTop = this.$refs.sla.scrollTop;
      this.$refs.gutter.scrollTop = this.scrollTop;
    },
    goToLine(line, focus = true) {
      const ta = this.$refs.sla;
      const offset = this.sla.split("\n").slice(0, line - 1).join("\n").length + (line > 1 ? 1 : 0);
      if (focus) { ta.focus(); ta.setSelectionRange(offset, offset); }
      ta.scrollTop = Math.max(0, (line - 3) * this.lineHeight);
      this.syncScroll();
    },
    // errors refuse the SLA; warnings (unknown fields, ignored) do not: both sit beside their line
    async submitSla(kind) {
      this.slaErrors = []; this.slaResult = ""; this.plan = [];
      let body;
      try {
        body = JSON.parse(this.sla);
      } catch (e) {
        this.slaErrors = [{path: "(JSON)", message: e.message, line: slaSyntaxLine(this.sla, e)}];
        this.slaResult = "not valid JSON";
        return;
      }
      const r = await this.api("POST", kind === "plan" ? "/api/plan" : "/api/apply", body);
      if (!r.ok) {
        const err = (r.body && r.body.error) || {};
        const lines = slaFieldLines(this.sla);
        const details = err.details && err.details.length ? err.details : [{path: "", message: err.message || ("HTTP " + r.status)}];
        this.slaErrors = details.map(d => ({path: d.path || "(SLA)", message: d.message, line: slaLineOf(lines, d.path)}));
        this.slaResult = (err.message || "refused") + " (HTTP " + r.status + ")";
        this.goToLine(Math.min(...this.slaErrors.map(e => e.line)), false);
        return;
      }
      const lines = slaFieldLines(this.sla);
      this.slaErrors = ((r.body && r.body.warnings) || []).map(w => ({path: w.path, message: w.message, warning: true,
                                                                      line: slaLineOf(lines, w.path)}));
      if (kind === "plan") {
        this.plan = (r.body && r.body.services) || [];
        this.slaResult = "dry run: nothing deployed";
        return;
      }
      const apps = (r.body && r.body.applications) || [];
      // as `treeline apply` does: ask for an instance of every service that has none yet
      let started = 0;
      for (const app of apps) {
        for (const id of app.microservices || []) {
          const service = await this.api("GET", "/api/service/" + encodeURIComponent(id));
          if (!service.ok || (service.body.instances || []).length || service.body.status !== "REQUESTED") { continue; }
          const deployed = await this.api("POST", "/api/service/" + encodeURIComponent(id) + "/instance");
          if (deployed.ok) { started += 1; }
          else { this.error = "deploying " + id + ": " + ((deployed.body && deployed.body.error && deployed.body.error.message) || deployed.status); }
        }
      }
      this.slaResult = apps.map(a => `${a.application_name}: ${a.action}` +
                                (a.failures && a.failures.length ? ` (${a.failures.length} failures)` : "")).join("; ") +
                       (started ? `; deploying ${started} service(s)` : "");
      await this.poll();
      if (!this.slaErrors.length) { this.show("deployments"); }  // warnings stay in sight
    },

    // -- formatting --------------------------------------------------------------------------
    bar(pct) {
      if (pct == null) { return "–"; }
      const w = Math.min(100, Math.max(0, pct));
      return `<span class="bar"><i style="width:${w}%"></i></span> ${pct} %`;
    },
    lastField(path) { return String(path || "").split(".").pop(); },
    isEmu(n, reading) { return (n.emulated_readings || []).includes(reading); },
    nodeName(id) { const n = this.overview.nodes.find(x => x.node_id === id); return n ? n.name : id; },
    ms(v) { return ms(v); },
    bytes(v) { return bytes(v); },
    clock(ts) { return ts ? new Date(ts * 1000).toLocaleTimeString() : ""; },
  };
}

function ms(v) { return v == null ? "–" : (Math.round(v * 100) / 100) + " ms"; }
function bytes(v) {
  if (v == null) { return "–"; }
  if (v >= 1 << 20) { return (v / (1 << 20)).toFixed(1) + " MB"; }
  if (v >= 1024) { return (v / 1024).toFixed(1) + " KB"; }
  return v + " B";
}
function esc(s) {
  return String(s ?? "").replace(/[&<>"']/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
}
