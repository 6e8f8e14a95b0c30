// Time series of one deployment while its page is open, drawn with uPlot. The root keeps no
// history: the dashboard samples GET /api/ui/service/<id> every period and keeps the last
// MAX_POINTS samples (10 minutes at 2 s). A new placement (another generation or other nodes)
// starts new series, since stage i of one plan is not stage i of the next.
"use strict";

const MAX_POINTS = 300;
const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
                 "#bcbd22", "#7f7f7f"];

class SeriesChart {
  // el: the container; labels: one per line; dashed: labels drawn dashed (predictions)
  constructor(el, labels, colours, dashed) {
    this.el = el;
    this.labels = labels;
    this.data = [[]].concat(labels.map(() => []));
    // the card's width (the charts sit in a grid that wraps on narrow windows)
    const width = Math.max(240, Math.floor(((el.parentElement && el.parentElement.clientWidth) || 376) - 16));
    const series = [{}].concat(labels.map((label, k) => ({
      label, stroke: colours[k] || PALETTE[k % PALETTE.length], width: 2,
      dash: dashed.includes(label) ? [6, 4] : undefined, spanGaps: true,
    })));
    this.plot = new uPlot({width, height: 180, series, scales: {x: {time: true, range: (u, lo, hi) => (lo === hi ? [lo - 60, hi + 1] : [lo, hi])}},
                           axes: [{}, {size: 50}], legend: {live: false}}, this.data, el);
  }
  push(t, values) {
    this.data[0].push(t);
    values.forEach((v, k) => this.data[k + 1].push(v == null ? null : v));
    if (this.data[0].length > MAX_POINTS) { this.data.forEach(col => col.shift()); }
    this.plot.setData(this.data);
  }
  destroy() { this.plot.destroy(); this.el.innerHTML = ""; }
}

// The three charts of one deployment; `key` names the placement they were made for.
class DeploymentCharts {
  constructor() { this.key = null; this.charts = []; this.lastRequests = null; this.lastE2e = null; }

  // detail: the /api/ui/service answer; colourOf(node_id) -> css colour
  update(detail, colourOf) {
    const strip = detail.strip || {stages: []};
    const stages = strip.stages || [];
    const key = detail.service.service_id + "/" + strip.generation + "/" + stages.map(s => s.node_id).join(",");
    if (key !== this.key) { this.reset(key, stages, colourOf); }
    const now = Date.now() / 1000;
    const measured = detail.measured || {stages: []};
    const perStage = stages.map(s => {
      const m = (measured.stages || []).find(x => x.index === s.index);
      return m ? m.measured_ms : null;
    });
    const predicted = ((strip.predicted || {}).latency_ms) ?? null;
    // end to end at the entry: the mean over the requests answered since the last sample
    let e2e = null;
    const n = measured.e2e_requests || 0, mean = measured.e2e_ms_mean || 0;
    if (this.lastE2e && n > this.lastE2e.n) {
      e2e = (n * mean - this.lastE2e.n * this.lastE2e.mean) / (n - this.lastE2e.n);
    }
    if (n) { this.lastE2e = {n, mean}; }
    this.charts[0].push(now, perStage.concat([measured.compute_ms, e2e, predicted]));
    const requests = measured.requests || 0;
    let rate = null;
    if (this.lastRequests && requests >= this.lastRequests.n && now > this.lastRequests.t) {
      rate = (requests - this.lastRequests.n) / (now - this.lastRequests.t);
    }
    this.lastRequests = {n: requests, t: now};
    this.charts[1].push(now, [rate, (strip.predicted || {}).throughput_rps ?? null]);
    this.charts[2].push(now, [measured.energy_mj, (strip.predicted || {}).energy_mj ?? null]);
  }

  reset(key, stages, colourOf) {
    this.destroy();
    this.key = key;
    this.lastRequests = null;
    this.lastE2e = null;
    const stageLabels = stages.map(s => "stage " + s.index + " " + (s.node_name || ""));
    const colours = stages.map(s => colourOf(s.node_id)).concat(["#555", "#d62728", "#888"]);
    this.charts = [
      new SeriesChart(document.getElementById("chart-latency"),
                      stageLabels.concat(["sum of stage compute", "measured end to end", "predicted end to end"]),
                      colours, ["predicted end to end"]),
      new SeriesChart(document.getElementById("chart-throughput"), ["measured", "predicted (pipelined)"],
                      ["#222", "#888"], ["predicted (pipelined)"]),
      new SeriesChart(document.getElementById("chart-energy"), ["measured (node power × compute)", "predicted"],
                      ["#222", "#888"], ["predicted"]),
    ];
  }

  destroy() { this.charts.forEach(c => c.destroy()); this.charts = []; this.key = null; }
}

// a chart's width: its card's (the charts sit in a grid that wraps on narrow windows)
function chartWidth(el) {
  return Math.max(240, Math.floor(((el && el.parentElement && el.parentElement.clientWidth) || 376) - 16));
}

// The two charts of a training service, over the round number (not time): accuracy and loss
// of the server's evaluation per round (accuracy on the left axis, 0–1; loss on the right) and
// the clients that took part in each round. The rows come whole from the root on every poll
// (GET /api/ui/service/<id> -> training.rounds), so the data is replaced, not appended.
class TrainingCharts {
  constructor() { this.key = null; this.plots = []; }

  // key: the service id (a new one starts new charts); rounds: [{round, accuracy, loss, clients}]
  update(key, rounds) {
    const xs = rounds.map(r => r.round);
    const data = [[xs, rounds.map(r => r.accuracy), rounds.map(r => r.loss)],
                  [xs, rounds.map(r => r.clients)]];
    if (key !== this.key) { this.reset(key); }
    this.plots.forEach((p, k) => {
      const width = chartWidth(p.root.parentElement);  // made while hidden: follow the card's width
      if (Math.abs(width - p.width) > 8) { p.setSize({width, height: 200}); }
      p.setData(data[k]);
    });
  }

  reset(key) {
    this.destroy();
    this.key = key;
    const el = [document.getElementById("chart-training"), document.getElementById("chart-clients")];
    const width = e => chartWidth(e);
    const x = {time: false, range: (u, lo, hi) => [Math.min(0, lo), Math.max(hi, lo + 1)]};
    const xBars = {time: false, range: (u, lo, hi) => [Math.min(0, lo) - 0.5, Math.max(hi, lo + 1) + 0.5]};
    const roundAxis = {label: "round", incrs: [1, 2, 5, 10, 20, 50, 100]};
    const bars = uPlot.paths && uPlot.paths.bars ? uPlot.paths.bars({size: [0.6, 40]}) : undefined;
    this.plots = [
      new uPlot({width: width(el[0]), height: 200, legend: {live: false},
                 scales: {x, acc: {range: [0, 1]}, loss: {auto: true}},
                 series: [{label: "round"},
                          {label: "accuracy", scale: "acc", stroke: "#2ca02c", width: 2, spanGaps: true,
                           points: {show: true}},
                          {label: "loss", scale: "loss", stroke: "#d62728", width: 2, dash: [6, 4], spanGaps: true,
                           points: {show: true}}],
                 axes: [roundAxis, {scale: "acc", size: 44}, {scale: "loss", side: 1, size: 44, grid: {show: false}}]},
                [[], [], []], el[0]),
      new uPlot({width: width(el[1]), height: 200, legend: {live: false},
                 scales: {x: xBars, n: {range: (u, lo, hi) => [0, Math.max(1, hi)]}},
                 series: [{label: "round"},
                          {label: "clients", scale: "n", stroke: "#1f77b4", fill: "#1f77b455", width: 1, paths: bars,
                           points: {show: !bars}}],
                 axes: [roundAxis, {scale: "n", size: 36, incrs: [1, 2, 5, 10, 20, 50]}]},
                [[], []], el[1]),
    ];
  }

  destroy() {
    this.plots.forEach(p => { const root = p.root; p.destroy(); if (root && root.parentElement) { root.parentElement.innerHTML = ""; } });
    this.plots = [];
    this.key = null;
  }
}
