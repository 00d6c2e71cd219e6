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
    ["files", "Files"], ["messages", "Messages"], ["access", "Access"], ["evidence", "Evidence"],
    ["alerts", "Alerts"]];

  async function renderRoom(room, tab, query) {
    state.room = room;
    const info = await api("GET", apiRoom(room));
    const tabs = h("nav", { class: "tabs", "aria-label": "Room views" }, TABS.map(([id, label]) =>
      h("a", { href: roomUrl(room, id), "aria-current": id === tab ? "page" : null, text: label })));
    const body = h("section", { id: "tab-" + tab });
    view.replaceChildren(h("h1", { text: info.name || room }), tabs, body);
    const renderers = { overview, twin, history, telemetry, files, messages, access, evidence, alerts };
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
          h("td", {}, m.devices.length ? m.devices.map((d) => h("div", { class: d.verified ? "ok" : "warn", "data-device": d.device_id },
            h("span", { class: "mono", text: d.device_id }), " " + (d.display_name || "") + " — " + (d.verified ? "verified" : "not verified"),
            !d.verified && m.membership === "join" && !(m.user_id === info.me && d.device_id === info.my_device)
              ? [" ", h("button", { type: "button", class: "link verify-device", onclick: () => startSas(room, m.user_id, d.device_id) }, "Verify with emoji")]
              : null)) : "none"),
          h("td", { text: fmtTime(m.last_active_ts) }),
          h("td", {}, info.my_access === "admin" && m.user_id !== info.me
            ? h("button", { type: "button", class: "revoke", onclick: () => act("/access/revoke", { user: m.user_id }, "Revoked " + m.user_id) }, "Revoke")
            : null))))),
      h("form", { id: "grant-form", class: "inline", onsubmit: (ev) => {
        ev.preventDefault();
        act("/access", { user: user.value, access: level.value }, "Granted " + level.value + " to " + user.value);
      } }, h("label", { for: "grant-user", text: "Grant access" }), user, level, h("button", { type: "submit", text: "Grant" })),
      done,
      h("section", { id: "sas", class: "sas no-print", "aria-live": "polite", hidden: true }),
      h("button", { type: "button", class: "no-print", onclick: () => window.print() }, "Print this review"));
    if (state.sasDone && state.sasDone.room === room) {
      document.getElementById("access-result").textContent = state.sasDone.text;
    }
  }

  // -- device verification (emoji SAS) --------------------------------------------------
  const SAS_TEXT = {
    requested: "Waiting for the other device to accept…",
    ready: "Accepted; exchanging keys…",
    started: "Exchanging keys…",
    accepted: "Exchanging keys…",
    keys_exchanged: "Compare these emoji with the other device's screen, in this order:",
    confirmed: "You confirmed; waiting for the other device…",
    done: "Verified.",
    cancelled: "Cancelled.",
  };

  async function startSas(room, user, device) {
    showError("");
    state.sasDone = null;
    let flow;
    try { flow = await api("POST", apiRoom(room, "/verify"), { user, device }); } catch (e) { showError(e.message); return; }
    const path = apiRoom(room, "/verify/" + encodeURIComponent(flow.flow_id));
    const answer = async (what) => {
      try { drawSas(room, await api("POST", path + "/" + what, {}), answer); } catch (e) { showError(e.message); }
    };
    drawSas(room, flow, answer);
    while (document.getElementById("sas") && state.route && state.route.parts[1] === room) {
      if (flow.state === "done" || flow.state === "cancelled") break;
      await new Promise((r) => setTimeout(r, 250));
      try { flow = await api("GET", path); } catch (e) { showError(e.message); return; }
      drawSas(room, flow, answer);
    }
    if (flow.state === "done") {
      state.sasDone = { room, text: "Verified " + flow.other_user + "'s device " + flow.other_device + " with emoji." };
      await render();
    }
  }

  function drawSas(room, flow, answer) {
    const box = document.getElementById("sas");
    if (!box || box.dataset.state === flow.state && flow.state !== "keys_exchanged") return;
    if (box.dataset.state === "keys_exchanged" && flow.state === "keys_exchanged") return;
    box.hidden = false;
    box.dataset.state = flow.state;
    box.dataset.flow = flow.flow_id;
    const why = flow.state === "cancelled"
      ? " " + (flow.cancel_code === "m.mismatched_sas" ? "The emoji did not match: nothing was verified." : (flow.cancel_reason || "")) +
        (flow.cancelled_by_us ? "" : " (by the other device)")
      : "";
    const parts = [
      h("h2", {}, "Verify ", h("span", { class: "mono", text: flow.other_user }), " / ", h("span", { class: "mono", text: flow.other_device || "" })),
      h("p", { id: "sas-state", text: SAS_TEXT[flow.state] + why }),
      flow.emojis.length && flow.state === "keys_exchanged"
        ? [h("ol", { id: "sas-emojis", class: "emojis" }, flow.emojis.map((e) =>
            h("li", { "data-number": e.number }, h("span", { class: "emoji", "aria-hidden": "true", text: e.symbol }), h("span", { class: "desc", text: e.description })))),
          h("div", { class: "inline" },
            h("button", { type: "button", id: "sas-match", onclick: () => answer("confirm") }, "They match"),
            h("button", { type: "button", id: "sas-mismatch", class: "revoke", onclick: () => answer("mismatch") }, "They don't match"))]
        : null,
      flow.state !== "done" && flow.state !== "cancelled"
        ? h("button", { type: "button", id: "sas-cancel", class: "verify", onclick: () => answer("cancel") }, "Cancel")
        : null];
    box.replaceChildren(...parts.flat().filter((p) => p));
    if (flow.state === "keys_exchanged") document.getElementById("sas-match").focus();
  }

  // -- evidence: claims and the audit trail ------------------------------------------------
  const short = (s) => (s && s.length > 20 ? s.slice(0, 10) + "…" + s.slice(-8) : s || "");

  async function evidence(room, _info, body) {
    const [claims, trail] = await Promise.all([api("GET", apiRoom(room, "/claims")), api("GET", apiRoom(room, "/audit"))]);
    const mark = (ok, yes, no) => h("span", { class: ok ? "ok" : "bad", text: (ok ? "✓ " : "✗ ") + (ok ? yes : no) });
    body.append(
      h("h2", { text: "Claims" }),
      claims.claims.length
        ? h("table", { id: "claims" },
          h("thead", {}, h("tr", {}, ["Claim", "Subject", "Issuer", "Signature", "CID", "Evidence", "Verdict"].map((t) => h("th", { text: t })))),
          h("tbody", {}, claims.claims.map((c) => h("tr", { "data-cid": c.cid, "data-ok": String(c.verdict.ok), "data-reason": c.verdict.reason },
            h("td", {}, h("strong", { text: c.type }), h("div", { class: "mono muted", text: fmtTime(c.ts) + " · " + c.collection })),
            h("td", { class: "mono", text: c.subject || "" }),
            h("td", { class: "mono", title: c.issuer, text: short(c.issuer) }),
            h("td", {}, mark(c.signature_ok, "valid", "not checked")),
            h("td", { class: "mono", title: c.cid }, mark(c.cid_ok, short(c.cid), short(c.cid))),
            h("td", {}, c.evidence.length ? c.evidence.map((e) => h("div", { class: "evidence" },
              mark(e.ok, e.kind + " " + (e.name || ""), e.kind + " " + (e.name || "")), " ", h("span", { class: "mono muted", title: e.cid, text: short(e.cid) }))) : "none"),
            h("td", { class: "verdict" }, mark(c.verdict.ok, "verified", c.verdict.reason), h("div", { class: "muted", text: c.verdict.detail }))))))
        : h("p", { class: "muted", text: "No claims in this room." }),
      h("h2", { text: "Audit trail" }),
      h("p", { id: "chain", "data-ok": String(trail.chain.ok) }, mark(trail.chain.ok, "hash chain intact", "hash chain broken"),
        " — " + trail.chain.detail + (trail.chain.seq ? " (entry " + trail.chain.seq + ")" : "") + "; " + trail.count + " entries."),
      h("h3", { text: "Anchors (this device's)" }),
      trail.anchors.length
        ? h("table", { id: "anchors" },
          h("thead", {}, h("tr", {}, ["Entries", "Merkle root", "Transaction", "Status"].map((t) => h("th", { text: t })))),
          h("tbody", {}, trail.anchors.map((a) => h("tr", { "data-status": a.status },
            h("td", { text: a.first_seq + "–" + a.last_seq }), h("td", { class: "mono", text: short(a.root) }),
            h("td", { class: "mono", text: short(a.tx_hash) }),
            h("td", { class: a.status === "committed" ? "ok" : "warn", text: a.status === "committed" ? "committed at height " + a.height : a.status.replace("_", " ") })))))
        : h("p", { id: "no-anchors", class: "muted", text: "This device has not anchored the trail (datarooms audit anchor)." }),
      h("table", { id: "trail" },
        h("thead", {}, h("tr", {}, ["#", "Hash", "Type", "Sender", "Time (UTC)"].map((t) => h("th", { text: t })))),
        h("tbody", {}, trail.entries.map((e) => h("tr", { "data-seq": e.seq },
          h("td", { class: "num", text: String(e.seq) }), h("td", { class: "mono", title: e.hash, text: short(e.hash) }),
          h("td", { class: "mono", text: e.type }), h("td", { class: "mono", text: e.sender }), h("td", { text: fmtTime(e.ts) }))))),
      trail.count > trail.entries.length ? h("p", { class: "muted", text: "The newest " + trail.entries.length + " of " + trail.count + " entries." }) : null);
  }

  // -- alerts -------------------------------------------------------------------------------
  async function alerts(room, _info, body) {
    const data = await api("GET", apiRoom(room, "/alerts"));
    const ack = async (ev, alert) => {
      showError("");
      ev.target.disabled = true;
      try {
        await api("POST", apiRoom(room, "/alerts/ack"), { event_id: alert.event_id });
        await render();
      } catch (e) { ev.target.disabled = false; showError(e.message); }
    };
    body.append(
      h("p", { class: "muted", text: "Alerts firing in this room and not resolved. Acknowledging one reacts to it in the room, as a reaction in any client does: it is not re-notified." }),
      data.alerts.length
        ? h("table", { id: "alerts" },
          h("thead", {}, h("tr", {}, ["Alert", "Series", "Severity", "Value", "Since (UTC)", "Last notified", "Acknowledged", ""].map((t) => h("th", { text: t })))),
          h("tbody", {}, data.alerts.map((a) => h("tr", { "data-key": a.key, "data-event": a.event_id, "data-acked": String(a.acked), class: "sev-" + a.severity },
            h("td", {}, h("strong", { text: a.name }), h("div", { class: "muted", text: a.summary })),
            h("td", { class: "mono", text: a.series }), h("td", { text: a.severity }),
            h("td", { class: "num", text: a.value === null ? "" : String(a.value) }),
            h("td", { text: fmtTime(a.since_ts) }), h("td", { text: fmtTime(a.last_ts) }),
            h("td", { class: "acked", text: a.acked ? "by " + a.acked_by.join(", ") : "no" }),
            h("td", {}, a.acked ? null : h("button", { type: "button", class: "ack", onclick: (ev) => ack(ev, a) }, "Acknowledge"))))))
        : h("p", { id: "no-alerts", class: "muted", text: "No open alerts." }));
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
