/// The operator's status page: plain HTML, CSS and a little JavaScript, no external files (it
/// must work offline). It polls `/api/status` every two seconds and draws the message rates of
/// the last five minutes.
enum StatusPage {
    static let html = Array(
        """
        <!doctype html>
        <html lang="en">
        <head>
        <meta charset="utf-8">
        <meta name="viewport" content="width=device-width, initial-scale=1">
        <title>Gatehouse status</title>
        <style>
          body { font: 14px/1.4 system-ui, sans-serif; margin: 0; background: #f4f5f7; color: #1d2330; }
          header { background: #1d2330; color: #fff; padding: 12px 24px; display: flex; gap: 16px; align-items: baseline; }
          header h1 { font-size: 18px; margin: 0; }
          header span { color: #aab; }
          main { padding: 16px 24px; display: grid; gap: 16px; grid-template-columns: repeat(auto-fill, minmax(180px, 1fr)); }
          section { background: #fff; border-radius: 6px; padding: 12px 16px; box-shadow: 0 1px 2px #0002; }
          section.wide { grid-column: 1 / -1; }
          h2 { font-size: 12px; text-transform: uppercase; letter-spacing: .05em; color: #667; margin: 0 0 6px; }
          .value { font-size: 28px; font-weight: 600; }
          .small { color: #667; }
          .error { color: #b00020; white-space: pre-wrap; font-family: ui-monospace, monospace; }
          table { border-collapse: collapse; width: 100%; }
          td, th { text-align: left; padding: 3px 8px 3px 0; border-bottom: 1px solid #eee; font-size: 13px; }
          canvas { width: 100%; height: 160px; }
          .legend-in { color: #2a7de1; } .legend-out { color: #e1662a; }
        </style>
        </head>
        <body>
        <header><h1>Gatehouse</h1><span id="version"></span><span>up <b id="uptime">…</b></span>
          <span id="state">connecting…</span></header>
        <main>
          <section><h2>Connections</h2><div class="value" id="connections">…</div></section>
          <section><h2>Sessions</h2><div class="value" id="sessions-connected">…</div>
            <div class="small"><span id="sessions-offline">…</span> offline</div></section>
          <section><h2>Subscriptions</h2><div class="value" id="subscriptions">…</div></section>
          <section><h2>Retained</h2><div class="value" id="retained">…</div></section>
          <section><h2>Messages in</h2><div class="value" id="rate-in">…</div><div class="small">per second</div></section>
          <section><h2>Messages out</h2><div class="value" id="rate-out">…</div><div class="small">per second</div></section>
          <section><h2>Dropped</h2><div class="value" id="dropped">…</div><div class="small">since start</div></section>
          <section class="wide"><h2>Message rates, last 5 minutes
            (<span class="legend-in">in</span>, <span class="legend-out">out</span>)</h2>
            <canvas id="chart" width="1200" height="160"></canvas></section>
          <section class="wide"><h2>Topic ACL</h2>
            <div><span id="acl-file"></span>: <b id="acl-rules">…</b> rules, loaded <span id="acl-loaded"></span></div>
            <div class="error" id="acl-error"></div></section>
          <section class="wide"><h2>Listeners</h2><div id="listeners"></div></section>
          <section class="wide"><h2>Last audit entries</h2>
            <table><thead><tr><th>When</th><th>Actor</th><th>Action</th><th>Subject</th></tr></thead>
            <tbody id="audit"></tbody></table></section>
        </main>
        <script>
        "use strict";
        const history = [];  // {at, in, out} messages per second
        let previous = null;
        const text = (id, value) => { document.getElementById(id).textContent = value; };
        const time = seconds => seconds ? new Date(seconds * 1000).toLocaleString() : "never";
        function duration(seconds) {
          const d = Math.floor(seconds / 86400), h = Math.floor(seconds / 3600) % 24, m = Math.floor(seconds / 60) % 60;
          return (d ? d + "d " : "") + (d || h ? h + "h " : "") + m + "m " + (seconds % 60) + "s";
        }
        function draw() {
          const canvas = document.getElementById("chart"), g = canvas.getContext("2d");
          g.clearRect(0, 0, canvas.width, canvas.height);
          const top = Math.max(1, ...history.map(p => Math.max(p.in, p.out)));
          g.fillStyle = "#667"; g.font = "12px sans-serif"; g.fillText(top.toFixed(0) + "/s", 4, 12);
          for (const [key, colour] of [["in", "#2a7de1"], ["out", "#e1662a"]]) {
            g.strokeStyle = colour; g.lineWidth = 2; g.beginPath();
            history.forEach((point, index) => {
              const x = canvas.width - (history.length - 1 - index) * (canvas.width / 150);
              const y = canvas.height - 4 - (point[key] / top) * (canvas.height - 20);
              index ? g.lineTo(x, y) : g.moveTo(x, y);
            });
            g.stroke();
          }
        }
        function render(status) {
          text("version", "version " + status.version);
          text("uptime", duration(status.uptime_seconds));
          text("connections", status.connections);
          text("sessions-connected", status.sessions.connected);
          text("sessions-offline", status.sessions.offline);
          text("subscriptions", status.subscriptions);
          text("retained", status.retained);
          text("dropped", status.messages.dropped);
          if (previous) {
            const seconds = Math.max(0.001, (status.now_ms - previous.now_ms) / 1000);
            const rates = { at: status.now_ms,
              in: (status.messages.received - previous.messages.received) / seconds,
              out: (status.messages.sent - previous.messages.sent) / seconds };
            history.push(rates);
            if (history.length > 150) history.shift();
            text("rate-in", rates.in.toFixed(1));
            text("rate-out", rates.out.toFixed(1));
            draw();
          } else {
            text("rate-in", "–"); text("rate-out", "–");
          }
          previous = status;
          text("acl-file", status.acl.file);
          text("acl-rules", status.acl.rules);
          text("acl-loaded", time(status.acl.loaded_at));
          text("acl-error", status.acl.last_error
            ? "last reload refused (" + time(status.acl.last_error_at) + "):\\n" + status.acl.last_error : "");
          document.getElementById("listeners").replaceChildren(...status.listeners.map(url => {
            const item = document.createElement("div"); item.textContent = url; return item; }));
          document.getElementById("audit").replaceChildren(...status.audit.map(entry => {
            const row = document.createElement("tr");
            for (const cell of [time(entry.at), entry.actor, entry.action, entry.subject]) {
              const td = document.createElement("td"); td.textContent = cell; row.append(td);
            }
            return row;
          }));
          text("state", "live");
          document.body.dataset.updated = String(status.now_ms);
        }
        async function poll() {
          try {
            const response = await fetch("/api/status", { cache: "no-store" });
            if (!response.ok) throw new Error(response.status + " " + response.statusText);
            render(await response.json());
          } catch (error) {
            text("state", "unreachable: " + error.message);
          }
          setTimeout(poll, 2000);
        }
        poll();
        </script>
        </body>
        </html>

        """.utf8)
}
