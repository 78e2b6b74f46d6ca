// Mles demo client: one WebSocket per channel, binary CBOR triplets.
"use strict";
(function () {
  const enc = new CBOR.Encoder({ useRecords: false, mapsAsObjects: true, tagUint8Array: false, variableMapSize: true });
  const dec = new CBOR.Decoder({ useRecords: false, mapsAsObjects: true });
  const te = new TextEncoder();
  const td = new TextDecoder("utf-8", { fatal: true });
  const $ = (id) => document.getElementById(id);
  let ws = null, me = null, channel = null;

  // Prefill from ?uid=..&channel=.. (handy for links and tests).
  const q = new URLSearchParams(location.search);
  $("uid").value = q.get("uid") || "";
  $("channel").value = q.get("channel") || "";

  function status(s) { $("status").textContent = s; }

  function show(uid, text, cls) {
    const d = document.createElement("div");
    if (cls) d.className = cls;
    if (uid !== null) {
      const u = document.createElement("span");
      u.className = "uid";
      u.textContent = uid + ": ";
      d.appendChild(u);
    }
    d.appendChild(document.createTextNode(text));
    $("log").appendChild(d);
    $("log").scrollTop = $("log").scrollHeight;
  }

  function text(bytes) {
    try { return td.decode(bytes); } catch (e) { return "<" + bytes.length + " bytes of binary>"; }
  }

  function send(message) {
    ws.send(enc.encode({ uid: me, channel: channel, message: message }));
  }

  function setJoined(on) {
    $("uid").disabled = $("channel").disabled = $("joinbtn").disabled = on;
    $("leavebtn").disabled = $("text").disabled = $("sendbtn").disabled = !on;
    if (on) $("text").focus();
  }

  function join(uid, ch) {
    me = uid; channel = ch;
    const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/";
    ws = new WebSocket(url, "mles-websocket");
    ws.binaryType = "arraybuffer";
    status("Connecting to " + url + " …");
    ws.onopen = () => {
      send(new Uint8Array(0)); // the join: an empty message
      setJoined(true);
      status("Joined channel " + ch + " as " + uid + ".");
      document.body.dataset.state = "joined";
    };
    ws.onmessage = (ev) => {
      if (!(ev.data instanceof ArrayBuffer)) return; // only binary triplets
      let t;
      try { t = dec.decode(new Uint8Array(ev.data)); } catch (e) { return; }
      if (!t || typeof t.uid !== "string" || !(t.message instanceof Uint8Array)) return;
      if (t.message.length === 0) show(null, t.uid + " joined", "sys");
      else show(t.uid, text(t.message), t.uid === me ? "me" : "");
    };
    ws.onclose = (ev) => {
      setJoined(false);
      document.body.dataset.state = "closed";
      status("Disconnected (" + ev.code + (ev.reason ? ": " + ev.reason : "") + ").");
      ws = null;
    };
  }

  $("join").addEventListener("submit", (e) => {
    e.preventDefault();
    const uid = $("uid").value.trim(), ch = $("channel").value.trim();
    if (uid && ch && !ws) join(uid, ch);
  });
  $("leavebtn").addEventListener("click", () => { if (ws) ws.close(1000, "leaving"); });
  $("send").addEventListener("submit", (e) => {
    e.preventDefault();
    const s = $("text").value;
    if (!s || !ws || ws.readyState !== WebSocket.OPEN) return;
    send(te.encode(s));
    show(me, s, "me"); // the server never echoes our own frames
    $("text").value = "";
  });
})();
