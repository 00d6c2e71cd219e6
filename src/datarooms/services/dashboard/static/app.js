"use strict";
// The datarooms dashboard: a page per view of the signed-in user's rooms, over the
// dashboard's JSON API; live updates over server-sent events (/api/events).
(() => {
  const CSRF = document.querySelector('meta[name="csrf"]').content;
  const view = document.getElementById("view");
  const errorBox = document.getElementById("error");
  const banner = document.getElementById("banner");
  const state = { route: null, room: null, twin: null, chart: null, homeserver: "up", stream: "up" };

  // -- helpers ------------------------------------------------------------------------
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else if (k === "text") el.textContent = v;
      else el.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }
  const fmtTime = (ms) => (ms ? new Date(ms).toISOString().replace("T", " ").slice(0, 19) : "");
  const fmtJson = (v) => JSON.stringify(v);
  const roomUrl = (room, tab) => "#/room/" + encodeURIComponent(room) + "/" + tab;
  const apiRoom = (room, rest) => "/api/rooms/" + encodeURIComponent(room) + (rest || "");

  function showError(message) {
    errorBox.textContent = message;
    errorBox.hidden = !message;
  }

  async function api(method, path, body, raw) {
    const headers = { "x-csrf-token": CSRF };
    let payload;
    if (raw !== undefined) payload = raw;
    else if (body !== undefined) {
      headers["content-type"] = "application/json";
      payload = JSON.stringify(body);
    }
    let resp;
    try {
      resp = await fetch(path, { method, headers, body: payload, credentials: "same-origin" });
    } catch (_e) {
      throw new Error("the dashboard is unreachable; retrying when it is back");
    }
    if (resp.status === 401) {
      window.location.assign("/login");
      throw new Error("signed out");
    }
    const data = await resp.json().catch(() => ({}));
    if (!resp.ok) throw new Error(data.error || "request failed (" + resp.status + ")");
    return data;
  }

  function setBanner() {
    let text = "";
    if (state.stream === "down") text = "The dashboard is unreachable; reconnecting…";
    else if (state.homeserver === "down")
      text = "The homeserver is unreachable: what you see is what this device already has; " +
        "changes fail until it is back. Reconnecting…";
    banner.textContent = text;
    banner.hidden = !text;
    document.body.dataset.homeserver = state.homeserver;
  }

  // -- live updates -------------------------------------------------------------------
  let source = null;
  function connect() {
    source = new EventSource("/api/events");
    source.onopen = () => { state.stream = "up"; setBanner(); };
    source.onmessage = (msg) => {
      const item = JSON.parse(msg.data);
      if (item.type === "status") {
        const back = state.homeserver === "down" && item.homeserver === "up";
        state.homeserver = item.homeserver;
        setBanner();
        if (back) render();
      } else if (item.type === "record") onRecord(item);
      else if (item.type === "signed_out") window.location.assign("/login");
    };
    source.onerror = () => {
      state.stream = "down";
      setBanner();
      if (source.readyState === EventSource.CLOSED) {
        source = null;
        setTimeout(async () => {
          try {
            const resp = await fetch("/api/me");
            if (resp.status === 401) { window.location.assign("/login"); return; }
          } catch (_e) { /* still down */ }
          connect();
        }, 1000);
      }
    };
  }

  function onRecord(item) {
    if (!state.twin || state.twin.room !== item.room_id) return;
    const tbody = state.twin.tbody;
    let row = tbody.querySelector('tr[data-key="' + CSS.escape(item.key) + '"]');
    if (row && Number(row.dataset.ts) > item.ts) return;
    const fresh = twinRow(state.twin.room, item);
    if (row) row.replaceWith(fresh);
    else {
      const after = [...tbody.children].find((r) => r.dataset.key > item.key);
      tbody.insertBefore(fresh, after || null);
    }
    fresh.classList.add("flash");
    document.getElementById("twin-count").textContent = String(tbody.children.length);
  }

  // -- routing ------------------------------------------------------------------------
  function parseRoute() {
    const hash = window.location.hash.replace(/^#\/?/, "");
    const [path, query] = hash.split("?");
    const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
    return { parts, query: new URLSearchParams(query || "") };
  }

  async function render() {
    const route = parseRoute();
    state.route = route;
    state.twin = null;
    if (state.chart) { state.chart.destroy(); state.chart = null; }
    showError("");
    view.replaceChildren(h("p", { class: "muted", text: "Loading…" }));
    try {
      await loadRooms();
      if (route.parts[0] === "room" && route.parts[1]) {
        await renderRoom(route.parts[1], route.parts[2] || "overview", route.query);
      } else await renderHome();
    } catch (e) {
      view.replaceChildren();
      showError(e.message);
    }
  }

  async function loadRooms() {
    const data = await api("GET", "/api/rooms");
    const nav = document.getElementById("rooms");
    nav.replaceChildren(
      h("h2", { text: "Rooms" }),
      h("ul", {}, data.rooms.map((r) =>
        h("li", {}, h("a", { href: roomUrl(r.room_id, "overview"), "data-room": r.room_id },
          r.name || r.room_id, " ", h("span", { class: "tag", text: r.kind || "room" }))))),
    );
    state.rooms = data.rooms;
    return data;
  }

  function bytes(n) {
    if (n >= 1e9) return (n / 1e9).toFixed(2) + " GB";
    if (n >= 1e6) return (n / 1e6).toFixed(2) + " MB";
    if (n >= 1e3) return (n / 1e3).toFixed(1) + " kB";
    return n + " B";
  }

  async function renderHome() {
    const rows = state.rooms.map((r) =>
      h("tr", {},
        h("td", {}, h("a", { href: roomUrl(r.room_id, "overview") }, r.name || r.room_id)),
        h("td", { text: r.kind || "" }),
        h("td", { class: "mono", text: r.did || "" }),
        h("td", { text: String(r.members) }),
        h("td", { text: r.encrypted ? "encrypted" : "NOT encrypted" }),
        h("td", { class: "num", text: r.keys + " keys, " + r.versions + " versions" }),
        h("td", { class: "num", text: r.files + " files" }),
        h("td", { class: "num", text: bytes(r.bytes) })));
    view.replaceChildren(
      h("h1", { text: "Your rooms" }),
      rows.length
        ? h("table", { id: "room-table" },
          h("thead", {}, h("tr", {}, ["Room", "Kind", "DID", "Members", "Encryption", "Records", "Files", "Size"].map((t) => h("th", { text: t })))),
          h("tbody", {}, rows))
        : h("p", { class: "muted", text: "You are in no rooms yet." }));
  }

  const TABS = [["overview", "Overview"], ["twin", "Twin"], ["telemetry", "Telemetry"],
    ["files", "Files"], ["messages", "Messages"], ["access", "Access"]];

  async function renderRoom(room, tab, query) {
    state.room = room;
    const info = await api("GET", apiRoom(room));
    const tabs = h("nav", { class: "tabs", "aria-label": "Room views" }, TABS.map(([id, label]) =>
      h("a", { href: roomUrl(room, id), "aria-current": id === tab ? "page" : null, text: label })));
    const body = h("section", { id: "tab-" + tab });
    view.replaceChildren(h("h1", { text: info.name || room }), tabs, body);
    const renderers = { overview, twin, history, telemetry, files, messages, access };
    await (renderers[tab] || overview)(room, info, body, query);
  }

  // -- overview -----------------------------------------------------------------------
  async function overview(room, info, body) {
    const dl = h("dl", { class: "facts" });
    const fact = (k, v, cls) => dl.append(h("dt", { text: k }), h("dd", { class: cls || null, text: v }));
    fact("Room", room, "mono");
    fact("Kind", info.kind || "(not a data room)");
    if (info.did) fact("DID", info.did, "mono");
    if (info.alias) fact("Alias", info.alias, "mono");
    if (info.purpose) fact("Purpose", info.purpose);
    fact("Encryption", info.encrypted ? "end-to-end encrypted (Megolm)" : "NOT encrypted");
    fact("Your access", info.my_access);
    fact("Server ACL", info.server_acl ? "allow " + info.server_acl.allow.join(", ") : "any server it federates with");
    body.append(dl,
      h("h2", { text: "Who can read and write" }),
      h("table", { id: "members" },
        h("thead", {}, h("tr", {}, ["Member", "Membership", "Access"].map((t) => h("th", { text: t })))),
        h("tbody", {}, info.members.map((m) => h("tr", {},
          h("td", { class: "mono", text: m.user_id }), h("td", { text: m.membership }), h("td", { text: m.access }))))),
      h("h2", { text: "Servers holding a copy" }),
      h("table", { id: "servers" },
        h("thead", {}, h("tr", {}, ["Server", "Members", "Allowed by ACL"].map((t) => h("th", { text: t })))),
        h("tbody", {}, info.servers.map((s) => h("tr", {},
          h("td", { class: "mono", text: s.server_name }), h("td", { text: s.members.join(", ") }),
          h("td", { text: s.allowed ? "yes" : "no (denied)" }))))));
  }

  // -- twin ---------------------------------------------------------------------------
  function twinRow(room, r) {
    return h("tr", { "data-key": r.key, "data-ts": r.ts },
      h("td", {}, h("a", { class: "mono", href: roomUrl(room, "history") + "?key=" + encodeURIComponent(r.key) }, r.key)),
      h("td", { class: "mono value", text: fmtJson(r.value) }),
      h("td", { text: fmtTime(r.ts) }),
      h("td", { class: "mono", text: r.sender }));
  }

  async function twin(room, _info, body) {
    const data = await api("GET", apiRoom(room, "/twin"));
    const tbody = h("tbody", {}, data.records.map((r) => twinRow(room, r)));
    state.twin = { room, tbody };
    const key = h("input", { id: "put-key", name: "key", required: true, placeholder: "key" });
    const value = h("input", { id: "put-value", name: "value", required: true, placeholder: 'JSON value, e.g. {"on": true}' });
    const form = h("form", { id: "put-form", class: "inline", onsubmit: async (ev) => {
      ev.preventDefault();
      showError("");
      let parsed;
      try { parsed = JSON.parse(value.value); } catch (_e) { showError("the value is not JSON"); return; }
      try {
        await api("POST", apiRoom(room, "/records"), { key: key.value, value: parsed });
        value.value = "";
      } catch (e) { showError(e.message); }
    } }, h("label", { for: "put-key", text: "Put a record" }), key, value, h("button", { type: "submit", text: "Put" }));
    body.append(
      h("p", {}, h("span", { id: "twin-count", text: String(data.records.length) }), " keys, live: a record put anywhere shows here at once."),
      h("table", { id: "twin" },
        h("thead", {}, h("tr", {}, ["Key", "Latest value", "Updated (UTC)", "By"].map((t) => h("th", { text: t })))),
        tbody),
      form);
  }

  async function history(room, _info, body, query) {
    const key = query.get("key") || "";
    const data = await api("GET", apiRoom(room, "/history") + "?key=" + encodeURIComponent(key));
    body.append(h("h2", {}, "History of ", h("span", { class: "mono", text: key })),
      h("ol", { id: "versions", class: "versions" }, data.versions.map((v) => h("li", {},
        h("div", { class: "meta" }, fmtTime(v.ts), " · ", h("span", { class: "mono", text: v.sender })),
        h("pre", { class: "mono", text: JSON.stringify(v.value, null, 2) }),
        h("ul", { class: "changes" }, v.changes.map((c) => h("li", { class: "op-" + c.op },
          h("span", { class: "mono", text: c.path }), " " + c.op + " ",
          c.op !== "added" ? h("del", { class: "mono", text: fmtJson(c.old) }) : null,
          c.op === "changed" ? " → " : null,
          c.op !== "removed" ? h("ins", { class: "mono", text: fmtJson(c.new) }) : null)))))));
  }

  // -- telemetry ----------------------------------------------------------------------
  const RANGES = [["1h", 3600e3], ["6h", 6 * 3600e3], ["24h", 24 * 3600e3], ["7d", 7 * 86400e3], ["all", 0]];

  async function telemetry(room, _info, body, query) {
    const data = await api("GET", apiRoom(room, "/series"));
    if (!data.series.length) {
      body.append(h("p", { class: "muted", text: "No telemetry in this room yet." }));
      return;
    }
    const metrics = [...new Set(data.series.map((s) => s.metric))].sort();
    const metric = query.get("metric") || metrics[0];
    const range = query.get("range") || "all";
    const info = data.series.filter((s) => s.metric === metric);
    const first = Math.min(...info.map((s) => s.first_ts));
    const last = Math.max(...info.map((s) => s.last_ts));
    const link = (m, r) => roomUrl(room, "telemetry") + "?metric=" + encodeURIComponent(m) + "&range=" + r;
    body.append(
      h("div", { class: "controls" },
        h("label", { for: "metric", text: "Metric" }),
        h("select", { id: "metric", onchange: (ev) => { window.location.hash = link(ev.target.value, range); } },
          metrics.map((m) => h("option", { value: m, selected: m === metric, text: m }))),
        h("span", { class: "ranges" }, RANGES.map(([name]) =>
          h("a", { href: link(metric, name), "aria-current": name === range ? "true" : null, text: name })))),
      h("p", { class: "muted", id: "chart-info" }),
      h("div", { id: "chart", class: "chart" }),
      h("p", { class: "muted", text: "Drag across the chart to zoom in (raw samples for short ranges); double-click to zoom out." }));
    const width = RANGES.find(([n]) => n === range)[1];
    const until = (width ? Date.now() : last) + 1;
    const since = width ? until - width : first;
    await drawChart(room, metric, since, until);
  }

  async function drawChart(room, metric, since, until) {
    const data = await api("GET", apiRoom(room, "/telemetry") + "?metric=" + encodeURIComponent(metric) +
      "&since=" + Math.floor(since) + "&until=" + Math.ceil(until));
    const infoEl = document.getElementById("chart-info");
    const el = document.getElementById("chart");
    if (!infoEl || !el) return;
    infoEl.replaceChildren(h("span", { id: "points", "data-count": data.t.length, "data-mode": data.mode, text: String(data.t.length) }),
      " points, " + (data.mode === "raw" ? "raw samples" : "mean per " + data.step / 1000 + " s bucket (min/max band)") +
      ", " + fmtTime(since) + " to " + fmtTime(until) + " UTC");
    if (state.chart) { state.chart.destroy(); state.chart = null; }
    const series = [{}, { label: metric, stroke: "#2563eb", width: 1.5 }];
    const cols = [data.t, data.v];
    if (data.mode === "rollup") {
      series.push({ label: "min", stroke: "#93c5fd", width: 1 }, { label: "max", stroke: "#93c5fd", width: 1 });
      cols.push(data.min, data.max);
    }
    const opts = {
      width: Math.max(280, el.clientWidth || 800), height: 320, series,
      scales: { x: { time: true } },
      cursor: { drag: { x: true, y: false } },
      hooks: {
        setSelect: [(u) => {
          if (u.select.width < 5) return;
          const a = u.posToVal(u.select.left, "x") * 1000;
          const b = u.posToVal(u.select.left + u.select.width, "x") * 1000;
          drawChart(room, metric, a, b).catch((e) => showError(e.message));
        }],
      },
    };
    state.chart = new uPlot(opts, cols, el);
    el.addEventListener("dblclick", () => render(), { once: true });
  }

  // -- files --------------------------------------------------------------------------
  async function sha256Hex(buffer) {
    const digest = await crypto.subtle.digest("SHA-256", buffer);
    return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
  }

  async function files(room, _info, body) {
    const data = await api("GET", apiRoom(room, "/files"));
    const input = h("input", { type: "file", id: "file-input" });
    const bar = h("progress", { id: "upload-progress", max: 100, value: 0, hidden: true });
    const last = state.lastUpload && state.lastUpload.room === room ? state.lastUpload : null;
    const result = h("p", { id: "upload-result", role: "status", "data-sha256": last && last.sha256,
      "data-verified": last && last.verified, text: last ? last.text : "" });
    const upload = async (ev) => {
      ev.preventDefault();
      showError("");
      const file = input.files[0];
      if (!file) { showError("choose a file first"); return; }
      const buffer = await file.arrayBuffer();
      const local = await sha256Hex(buffer);
      bar.hidden = false;
      const xhr = new XMLHttpRequest();
      xhr.open("POST", apiRoom(room, "/files") + "?name=" + encodeURIComponent(file.name));
      xhr.setRequestHeader("x-csrf-token", CSRF);
      xhr.setRequestHeader("content-type", "application/octet-stream");
      xhr.upload.onprogress = (e) => { if (e.lengthComputable) bar.value = (100 * e.loaded) / e.total; };
      xhr.onload = () => {
        let res = {};
        try { res = JSON.parse(xhr.responseText); } catch (_e) { /* not JSON */ }
        if (xhr.status !== 200) { showError(res.error || "upload failed (" + xhr.status + ")"); return; }
        const ok = res.sha256 === local;
        state.lastUpload = {
          room, sha256: res.sha256, verified: String(ok),
          text: ok
            ? "Uploaded " + res.name + " (" + res.size + " bytes, encrypted), SHA-256 " + local + " verified."
            : "Uploaded, but the SHA-256 the dashboard received differs from yours!",
        };
        render();
      };
      xhr.onerror = () => showError("upload failed: the dashboard is unreachable");
      xhr.send(buffer);
    };
    const rows = data.files.map((f) => h("tr", { "data-event": f.event_id },
      h("td", {}, h("a", { href: apiRoom(room, "/files/" + encodeURIComponent(f.event_id)), download: f.name, text: f.name })),
      h("td", { text: f.size === null ? "?" : String(f.size) }),
      h("td", { text: fmtTime(f.ts) }), h("td", { class: "mono", text: f.sender }),
      h("td", {}, h("button", { type: "button", class: "verify", onclick: async (ev) => {
        const btn = ev.target;
        const resp = await fetch(apiRoom(room, "/files/" + encodeURIComponent(f.event_id)));
        if (!resp.ok) { showError((await resp.json().catch(() => ({}))).error || "download failed"); return; }
        const got = await sha256Hex(await resp.arrayBuffer());
        const ok = got === resp.headers.get("x-content-sha256");
        btn.textContent = ok ? "SHA-256 ok" : "SHA-256 MISMATCH";
        btn.dataset.sha256 = got;
      } }, "Verify"))));
    body.append(
      h("form", { id: "upload-form", class: "inline", onsubmit: upload },
        h("label", { for: "file-input", text: "Upload a file (encrypted before it leaves the dashboard)" }), input,
        h("button", { type: "submit", id: "upload", text: "Upload" }), bar),
      result,
      h("table", { id: "files" },
        h("thead", {}, h("tr", {}, ["File", "Bytes", "Sent (UTC)", "By", ""].map((t) => h("th", { text: t })))),
        h("tbody", {}, rows)));
  }

  // -- messages -----------------------------------------------------------------------
  async function messages(room, _info, body) {
    const data = await api("GET", apiRoom(room, "/messages"));
    let threadRoot = null;
    const text = h("textarea", { id: "message-body", rows: 2, required: true, placeholder: "Write a message" });
    const replying = h("p", { class: "muted", id: "replying", hidden: true });
    const list = h("ol", { id: "messages", class: "messages" }, data.messages.map((m) => h("li", {
      "data-event": m.event_id, class: m.thread_root ? "in-thread" : null },
      h("div", { class: "meta" }, h("span", { class: "mono", text: m.sender }), " · " + fmtTime(m.ts),
        m.thread_root ? " · in a thread" : ""),
      h("div", { class: "body", text: m.decrypted ? (m.body || "(" + (m.msgtype || "event") + ")") : "(cannot decrypt yet: no key on this device)" }),
      m.thread_root ? null : h("button", { type: "button", class: "link", onclick: () => {
        threadRoot = m.event_id;
        replying.textContent = "Replying in the thread of " + m.event_id;
        replying.hidden = false;
        text.focus();
      } }, "Reply in thread"))));
    body.append(list, replying,
      h("form", { id: "message-form", class: "inline", onsubmit: async (ev) => {
        ev.preventDefault();
        showError("");
        try {
          await api("POST", apiRoom(room, "/messages"), { body: text.value, thread_root: threadRoot });
          render();
        } catch (e) { showError(e.message); }
      } }, h("label", { for: "message-body", text: "Message" }), text, h("button", { type: "submit", text: "Send" })));
  }

  // -- access -------------------------------------------------------------------------
  async function access(room, info, body) {
    const data = await api("GET", apiRoom(room, "/access"));
    const user = h("input", { id: "grant-user", required: true, placeholder: "@someone:server" });
    const level = h("select", { id: "grant-access" }, ["read", "write", "admin"].map((a) => h("option", { value: a, text: a })));
    const done = h("p", { id: "access-result", role: "status" });
    const act = async (path, payload, message) => {
      showError("");
      try {
        await api("POST", apiRoom(room, path), payload);
        await render();
        const el = document.getElementById("access-result");
        if (el) el.textContent = message;
      } catch (e) { showError(e.message); }
    };
    body.append(
      h("h2", { text: "Access review" }),
      h("p", { class: "muted", text: "Generated " + fmtTime(Date.now()) + " UTC for " + room + "." }),
      h("table", { id: "access" },
        h("thead", {}, h("tr", {}, ["Member", "Membership", "Access", "Devices (verification)", "Last active", ""].map((t) => h("th", { text: t })))),
        h("tbody", {}, data.members.map((m) => h("tr", { "data-user": m.user_id },
          h("td", { class: "mono", text: m.user_id }), h("td", { text: m.membership }), h("td", { class: "access", text: m.access }),
          h("td", {}, m.devices.length ? m.devices.map((d) => h("div", { class: d.verified ? "ok" : "warn" },
            h("span", { class: "mono", text: d.device_id }), " " + (d.display_name || "") + " — " + (d.verified ? "verified" : "not verified"))) : "none"),
          h("td", { text: fmtTime(m.last_active_ts) }),
          h("td", {}, info.my_access === "admin" && m.user_id !== info.me
            ? h("button", { type: "button", class: "revoke", onclick: () => act("/access/revoke", { user: m.user_id }, "Revoked " + m.user_id) }, "Revoke")
            : null))))),
      h("form", { id: "grant-form", class: "inline", onsubmit: (ev) => {
        ev.preventDefault();
        act("/access", { user: user.value, access: level.value }, "Granted " + level.value + " to " + user.value);
      } }, h("label", { for: "grant-user", text: "Grant access" }), user, level, h("button", { type: "submit", text: "Grant" })),
      done,
      h("button", { type: "button", class: "no-print", onclick: () => window.print() }, "Print this review"));
  }

  // -- start --------------------------------------------------------------------------
  document.getElementById("logout").addEventListener("click", async () => {
    try { await api("POST", "/logout", {}); } catch (_e) { /* signed out anyway */ }
    window.location.assign("/login");
  });
  window.addEventListener("hashchange", render);
  setInterval(async () => {
    try {
      const resp = await fetch("/api/health");
      const data = await resp.json();
      if (state.stream === "down" && resp.ok) { state.stream = "up"; }
      if (data.homeserver !== state.homeserver) {
        const back = state.homeserver === "down";
        state.homeserver = data.homeserver;
        if (back) render();
      }
    } catch (_e) { state.stream = "down"; }
    setBanner();
  }, 3000);
  connect();
  render();
})();
