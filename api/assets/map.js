// fleetd live map: vehicles from GET /v1/vehicles and the SSE stream,
// alerts as they happen, an H3 heatmap from GET /v1/cells, geofences from
// GET /v1/geofences, and click-to-inspect with the recent track.
// Loads nothing but fleetd's own URLs (tiles only when configured).
//
// Authentication: the API token comes in the URL fragment (`#token=…`, which
// browsers never send to the server), is kept in sessionStorage for this tab
// and removed from the address bar. Every request carries it as
// `Authorization: Bearer`; the live stream is read with fetch (EventSource
// cannot send headers). Without a token, when the server asks for one (401),
// the page says how to sign in instead of showing an empty map; a server
// without authentication answers without one and the page just works.
//
// Share links (`#share=…`, made with POST /v1/shares) open the same page on
// just the shared devices: their position, live updates and recent track;
// no alerts, heatmap or geofences (the link may not read them).
(function () {
  'use strict';

  var TOKEN_KEY = 'fleetd.token';
  var SHARE_KEY = 'fleetd.share';
  var token = null;
  var shareMode = false;
  function fromFragment(name) {
    var m = new RegExp('(?:^#|&)' + name + '=([^&]+)').exec(window.location.hash || '');
    if (!m) return null;
    try { return decodeURIComponent(m[1]); } catch (e) { return m[1]; }
  }
  function remember(key, value) {
    try { sessionStorage.setItem(key, value); } catch (e) { /* private mode: memory only */ }
  }
  function recall(key) {
    try { return sessionStorage.getItem(key); } catch (e) { return null; }
  }
  function forget(key) {
    try { sessionStorage.removeItem(key); } catch (e) { /* ignore */ }
  }
  (function takeToken() {
    var share = fromFragment('share');
    var given = fromFragment('token');
    if (share) {
      token = share; shareMode = true; remember(SHARE_KEY, share);
    } else if (given) {
      token = given; forget(SHARE_KEY); remember(TOKEN_KEY, given);
    } else if (recall(SHARE_KEY)) {
      token = recall(SHARE_KEY); shareMode = true;
    } else {
      token = recall(TOKEN_KEY);
    }
    // Keep the secret out of the address bar, history and bookmarks.
    if (share || given) history.replaceState(null, '', window.location.pathname + window.location.search);
  })();

  // Opening the printed URL (or a share link) in a tab already on the page
  // changes only the fragment, which does not reload: take it and start
  // afresh.
  window.addEventListener('hashchange', function () {
    var share = fromFragment('share');
    var given = fromFragment('token');
    if (!share && !given) return;
    if (share) { remember(SHARE_KEY, share); } else { forget(SHARE_KEY); remember(TOKEN_KEY, given); }
    history.replaceState(null, '', window.location.pathname + window.location.search);
    window.location.reload();
  });

  var signedOut = false;
  function headers(extra) {
    var h = extra || {};
    if (token) h['Authorization'] = 'Bearer ' + token;
    return h;
  }
  // fetch with the token; a 401 shows the sign-in box and rejects.
  function api(url, init) {
    init = init || {};
    init.headers = headers(init.headers);
    return fetch(url, init).then(function (r) {
      if (r.status === 401) { showSignin(); throw new Error('unauthorized'); }
      return r;
    });
  }

  function showSignin() {
    if (signedOut) return;
    signedOut = true;
    if (shareMode) {
      forget(SHARE_KEY);
      setStatus('down', 'link ended');
      el('share-ended').hidden = false;
      return;
    }
    forget(TOKEN_KEY);
    setStatus('down', 'signed out');
    var box = document.getElementById('signin');
    box.hidden = false;
    document.getElementById('signin-message').textContent = token
      ? 'The token was refused (revoked or expired). '
      : 'This fleetd needs an API token. ';
  }
  document.getElementById('signin-form').addEventListener('submit', function (e) {
    e.preventDefault();
    var value = document.getElementById('signin-token').value.trim();
    if (!value) return;
    try { sessionStorage.setItem(TOKEN_KEY, value); } catch (err) { /* memory only */ }
    // A fresh start with the token: simpler than re-running every loader.
    window.location.reload();
  });

  var config = {};
  try { config = JSON.parse(document.getElementById('fleetd-config').textContent) || {}; } catch (e) { config = {}; }

  var map = L.map('map', { worldCopyJump: true, minZoom: 2 }).setView([30, 0], 2);
  if (config.tile_url) {
    L.tileLayer(config.tile_url, { attribution: config.tile_attribution || '', maxZoom: 19 }).addTo(map);
  } else {
    graticule(map);
  }

  var vehicleLayer = L.layerGroup().addTo(map);
  var vehicles = new Map(); // device id -> { marker, data }
  var selected = null;
  var trackLayer = null;
  var fitted = false;
  var events = 0;
  var alertsShown = 0;
  var MAX_ALERTS = 200;

  var el = function (id) { return document.getElementById(id); };

  // --- vehicles -----------------------------------------------------------
  function upsert(v) {
    if (typeof v.lat !== 'number' || typeof v.lon !== 'number') return;
    var entry = vehicles.get(v.device_id);
    if (!entry) {
      var icon = L.divIcon({ className: 'fleetd-vehicle', iconSize: [12, 12] });
      var marker = L.marker([v.lat, v.lon], { icon: icon, title: v.device_id, keyboard: false });
      marker.on('click', function () { inspect(v.device_id); });
      marker.addTo(vehicleLayer);
      entry = { marker: marker, data: v };
      vehicles.set(v.device_id, entry);
      el('vehicle-count').textContent = vehicles.size;
    } else {
      if (entry.data.ts_ms > v.ts_ms) return; // never step back in time
      // An area query's bare position of the same fix keeps the state and
      // registry fields a stream event brought.
      if (entry.data.ts_ms === v.ts_ms) v = Object.assign({}, entry.data, v);
      entry.data = v;
      entry.marker.setLatLng([v.lat, v.lon]);
    }
    var node = entry.marker.getElement();
    if (node) {
      node.dataset.device = v.device_id;
      node.dataset.lat = v.lat;
      node.dataset.lon = v.lon;
      node.dataset.ts = v.ts_ms;
      node.classList.toggle('stopped', !(v.speed_mps > 0.5));
      node.classList.toggle('selected', v.device_id === selected);
    }
    if (v.device_id === selected) showFields(v);
  }

  function fitFleet() {
    if (vehicles.size === 0) return;
    var bounds = L.latLngBounds([]);
    vehicles.forEach(function (e) { bounds.extend(e.marker.getLatLng()); });
    map.fitBounds(bounds.pad(0.15), { maxZoom: 16, animate: false });
    fitted = true;
  }

  // A share link: what it shows, then each of its devices.
  var share = null;
  function loadShare() {
    return api('/v1/share')
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (info) {
        if (!info) return;
        share = info;
        el('share-title').textContent = info.name;
        el('share-until').textContent = info.expires_ms ? new Date(info.expires_ms).toLocaleString() : '';
        return Promise.all(info.devices.map(function (id) {
          return api('/v1/vehicles/' + encodeURIComponent(id))
            .then(function (r) { return r.ok ? r.json() : null; })
            .then(function (v) { if (v) upsert(v); })
            .catch(function () {});
        })).then(function () {
          fitFleet();
          if (info.devices.length === 1 && vehicles.has(info.devices[0])) inspect(info.devices[0]);
        });
      })
      .catch(function () {});
  }

  function loadVehicles() {
    return api('/v1/vehicles?bbox=-180,-90,180,90&limit=10000')
      .then(function (r) { return r.ok ? r.json() : { vehicles: [] }; })
      .then(function (body) { (body.vehicles || []).forEach(upsert); if (!fitted) fitFleet(); })
      .catch(function () {});
  }

  // --- inspect ------------------------------------------------------------
  function showFields(v) {
    var rows = [
      ['time', new Date(v.ts_ms).toLocaleTimeString()],
      ['position', v.lat.toFixed(5) + ', ' + v.lon.toFixed(5)],
      ['speed', v.speed_mps != null ? (v.speed_mps * 3.6).toFixed(1) + ' km/h' : '—'],
      ['heading', v.heading_deg != null ? Math.round(v.heading_deg) + '°' : '—'],
      ['accuracy', v.accuracy_m != null ? v.accuracy_m + ' m' : '—'],
      ['battery', v.battery_pct != null ? Math.round(v.battery_pct) + ' %' : '—'],
    ];
    ['motion', 'odometer_m', 'name', 'class', 'speed_limit_kmh'].forEach(function (k) {
      if (v[k] != null && typeof v[k] !== 'object') rows.push([k, String(v[k])]);
    });
    if (v.h3) Object.keys(v.h3).forEach(function (r) { rows.push(['h3 res ' + r, v.h3[r]]); });
    var dl = el('inspect-fields');
    dl.textContent = '';
    rows.forEach(function (row) {
      var dt = document.createElement('dt'); dt.textContent = row[0];
      var dd = document.createElement('dd'); dd.textContent = row[1];
      dl.appendChild(dt); dl.appendChild(dd);
    });
  }

  function inspect(id) {
    var previous = selected && vehicles.get(selected);
    if (previous && previous.marker.getElement()) previous.marker.getElement().classList.remove('selected');
    selected = id;
    var entry = vehicles.get(id);
    if (entry && entry.marker.getElement()) entry.marker.getElement().classList.add('selected');
    el('inspect').hidden = false;
    el('inspect-title').textContent = id;
    var path = '/v1/vehicles/' + encodeURIComponent(id);
    api(path).then(function (r) { return r.ok ? r.json() : null; })
      .then(function (v) { if (v && selected === id) { showFields(v); } }).catch(function () {});
    var from = Date.now() - (share ? share.history_s : 3600) * 1000;
    api(path + '/track?format=geojson&limit=2000&from=' + from)
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (fc) {
        if (!fc || selected !== id) return;
        if (trackLayer) map.removeLayer(trackLayer);
        var line = (fc.features || []).map(function (f) {
          return [f.geometry.coordinates[1], f.geometry.coordinates[0]];
        });
        trackLayer = L.polyline(line, { color: '#e8590c', weight: 3, opacity: 0.8, className: 'fleetd-track' }).addTo(map);
      }).catch(function () {});
  }

  el('inspect-close').addEventListener('click', function () {
    var entry = selected && vehicles.get(selected);
    if (entry && entry.marker.getElement()) entry.marker.getElement().classList.remove('selected');
    selected = null;
    el('inspect').hidden = true;
    if (trackLayer) { map.removeLayer(trackLayer); trackLayer = null; }
  });

  // --- alerts -------------------------------------------------------------
  var alertIds = new Set(); // shown already (stored ones, then live ones)

  function showAlert(a, stored) {
    if (a.id != null) {
      if (alertIds.has(a.id)) return;
      alertIds.add(a.id);
    }
    var li = document.createElement('li');
    li.className = 'fleetd-alert ' + a.kind;
    li.dataset.alertId = a.id;
    var when = document.createElement('span');
    when.className = 'when';
    when.textContent = new Date(a.ts_ms).toLocaleTimeString();
    li.appendChild(when);
    var what = a.kind + ' · ' + a.device_id;
    if (a.geofence_id) what += ' · ' + (a.detail && a.detail.geofence_name || a.geofence_id);
    if (a.detail && a.detail.speed_kmh != null) what += ' · ' + Math.round(a.detail.speed_kmh) + ' km/h';
    li.appendChild(document.createTextNode(what));
    li.addEventListener('click', function () {
      map.setView([a.lat, a.lon], Math.max(map.getZoom(), 15));
      if (vehicles.has(a.device_id)) inspect(a.device_id);
    });
    var list = el('alerts');
    list.insertBefore(li, list.firstChild);
    while (list.children.length > MAX_ALERTS) list.removeChild(list.lastChild);
    alertsShown += 1;
    el('alert-count').textContent = alertsShown;
    var entry = !stored && vehicles.get(a.device_id);
    var node = entry && entry.marker.getElement();
    if (node) {
      node.classList.remove('alerting');
      void node.offsetWidth; // restart the animation
      node.classList.add('alerting');
    }
  }

  // --- stream -------------------------------------------------------------
  // Server-sent events read with fetch, so that the request can carry the
  // token; reconnects resume after the last event seen (Last-Event-ID).
  var lastEventId = null;
  var retryMs = 1000;

  function handle(type, data) {
    if (type === 'position') {
      events += 1;
      try { upsert(JSON.parse(data)); } catch (err) { return; }
      if (!fitted) fitFleet();
    } else if (type === 'alert') {
      events += 1;
      try { showAlert(JSON.parse(data)); } catch (err) { /* ignore malformed */ }
    } else if (type === 'gap') {
      // Missed positions are superseded by the next ones; missed alerts are
      // in GET /v1/alerts.
      try { var g = JSON.parse(data); setStatus('live', 'live (missed ' + g.kind + ')'); } catch (err) { /* ignore */ }
    }
  }

  // One event block of text/event-stream (lines up to a blank line).
  function dispatch(block) {
    var type = 'message', data = [], id = null;
    block.split(/\r\n|\r|\n/).forEach(function (line) {
      if (line === '' || line.charAt(0) === ':') return; // comments are heartbeats
      var colon = line.indexOf(':');
      var field = colon < 0 ? line : line.slice(0, colon);
      var value = colon < 0 ? '' : line.slice(colon + 1);
      if (value.charAt(0) === ' ') value = value.slice(1);
      if (field === 'event') type = value;
      else if (field === 'data') data.push(value);
      else if (field === 'id') id = value;
      else if (field === 'retry' && /^\d+$/.test(value)) retryMs = Number(value);
    });
    if (id !== null) lastEventId = id;
    if (data.length) handle(type, data.join('\n'));
  }

  function connect() {
    if (signedOut) return;
    var extra = { 'Accept': 'text/event-stream' };
    if (lastEventId !== null) extra['Last-Event-ID'] = lastEventId;
    api(shareMode ? '/v1/stream?kinds=positions' : '/v1/stream', { headers: extra, cache: 'no-store' }).then(function (r) {
      if (!r.ok || !r.body) throw new Error('stream answered ' + r.status);
      setStatus('live', 'live');
      var reader = r.body.getReader();
      var decoder = new TextDecoder();
      var buffer = '';
      function pump() {
        return reader.read().then(function (chunk) {
          if (chunk.done) throw new Error('stream ended');
          buffer += decoder.decode(chunk.value, { stream: true });
          var end;
          while ((end = buffer.search(/\r\n\r\n|\n\n|\r\r/)) >= 0) {
            var sep = buffer.slice(end).match(/^(\r\n\r\n|\n\n|\r\r)/)[0].length;
            dispatch(buffer.slice(0, end));
            buffer = buffer.slice(end + sep);
          }
          return pump();
        });
      }
      return pump();
    }).catch(function () {
      if (signedOut) return;
      setStatus('down', 'reconnecting…');
      setTimeout(connect, retryMs);
    });
  }

  function setStatus(cls, text) {
    var s = el('status');
    s.className = 'status ' + cls;
    s.textContent = text;
  }

  setInterval(function () {
    el('event-rate').textContent = events;
    events = 0;
    if (el('follow-toggle').checked) fitFleet();
  }, 1000);

  // --- heatmap ------------------------------------------------------------
  var heatLayer = null;
  var heatTimer = null;
  function heatRes() { return Math.max(5, Math.min(9, Math.round(map.getZoom() / 1.6))); }
  function refreshHeat() {
    var b = map.getBounds();
    var clamp = function (x, lo, hi) { return Math.max(lo, Math.min(hi, x)); };
    var bbox = [clamp(b.getWest(), -180, 180), clamp(b.getSouth(), -90, 90),
      clamp(b.getEast(), -180, 180), clamp(b.getNorth(), -90, 90)].map(function (x) { return x.toFixed(5); }).join(',');
    var res = heatRes();
    el('heatmap-res').textContent = '(res ' + res + ')';
    api('/v1/cells?format=geojson&res=' + res + '&bbox=' + bbox)
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (fc) {
        if (!fc || !el('heatmap-toggle').checked) return;
        var max = 1;
        fc.features.forEach(function (f) { max = Math.max(max, f.properties.count); });
        var next = L.geoJSON(fc, {
          interactive: false,
          style: function (f) {
            var t = f.properties.count / max;
            return { stroke: true, weight: 0.5, color: '#c92a2a', fillColor: '#fa5252', fillOpacity: 0.12 + 0.6 * t, className: 'fleetd-cell' };
          },
        }).addTo(map);
        if (heatLayer) map.removeLayer(heatLayer);
        heatLayer = next;
        vehicleLayer.eachLayer(function (m) { m.setZIndexOffset(1000); });
      }).catch(function () {});
  }
  el('heatmap-toggle').addEventListener('change', function (e) {
    if (e.target.checked) {
      refreshHeat();
      heatTimer = setInterval(refreshHeat, 3000);
    } else {
      clearInterval(heatTimer);
      if (heatLayer) { map.removeLayer(heatLayer); heatLayer = null; }
      el('heatmap-res').textContent = '';
    }
  });
  map.on('moveend', function () { if (el('heatmap-toggle').checked) refreshHeat(); });

  // --- geofences ----------------------------------------------------------
  function loadGeofences() {
    api('/v1/geofences?limit=1000').then(function (r) {
      if (r.status === 404) { el('geofence-note').textContent = 'No geofence API on this server.'; return null; }
      return r.ok ? r.json() : null;
    }).then(function (body) {
      if (!body) return;
      var items = Array.isArray(body) ? body : (body.geofences || body.features || []);
      items.forEach(function (g) {
        var style = { color: '#2b8a3e', weight: 2, fillOpacity: 0.08, className: 'fleetd-geofence' };
        var name = g.name || (g.properties && g.properties.name) || g.id || '';
        var layer = null;
        var shape = g.geometry || g.shape || g;
        if (shape.center && shape.radius_m) {
          layer = L.circle([shape.center[1], shape.center[0]], Object.assign({ radius: shape.radius_m }, style));
        } else if (g.type === 'Feature' || (g.geometry && g.geometry.type)) {
          layer = L.geoJSON(g.type === 'Feature' ? g : { type: 'Feature', geometry: g.geometry, properties: {} }, { style: style });
        }
        if (layer) { layer.bindTooltip(String(name)); layer.addTo(map); }
      });
      el('geofence-note').textContent = items.length + (body.next_cursor ? '+' : '') + ' geofences';
    }).catch(function () {});
  }

  // --- graticule (no tiles) -----------------------------------------------
  function graticule(m) {
    var layer = L.layerGroup().addTo(m);
    function draw() {
      layer.clearLayers();
      var b = m.getBounds();
      var span = Math.max(b.getEast() - b.getWest(), b.getNorth() - b.getSouth());
      var steps = [90, 45, 30, 10, 5, 2, 1, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001];
      var step = steps[steps.length - 1];
      for (var i = 0; i < steps.length; i++) { if (span / steps[i] >= 4) { step = steps[i]; break; } }
      var style = { color: '#b8c2cc', weight: 1, interactive: false };
      var digits = step < 1 ? Math.ceil(-Math.log10(step)) : 0;
      var west = Math.floor(b.getWest() / step) * step, east = b.getEast();
      var south = Math.max(-85, Math.floor(b.getSouth() / step) * step), north = Math.min(85, b.getNorth());
      for (var lon = west; lon <= east; lon += step) {
        L.polyline([[south, lon], [north, lon]], style).addTo(layer);
        L.marker([b.getSouth(), lon], { interactive: false, keyboard: false,
          icon: L.divIcon({ className: 'graticule-label', html: lon.toFixed(digits) + '°', iconSize: [60, 14], iconAnchor: [-3, 16] }) }).addTo(layer);
      }
      for (var lat = south; lat <= north; lat += step) {
        L.polyline([[lat, west], [lat, east]], style).addTo(layer);
        L.marker([lat, b.getWest()], { interactive: false, keyboard: false,
          icon: L.divIcon({ className: 'graticule-label', html: lat.toFixed(digits) + '°', iconSize: [60, 14], iconAnchor: [-3, 14] }) }).addTo(layer);
      }
    }
    m.on('moveend', draw);
    draw();
  }

  window.fleetd = { vehicles: vehicles, map: map, inspect: inspect };
  // The most recent stored alerts, oldest first so the newest ends on top;
  // live ones follow (an alert seen in both is shown once).
  function loadAlerts() {
    return api('/v1/alerts?limit=' + MAX_ALERTS)
      .then(function (r) { return r.ok ? r.json() : { alerts: [] }; })
      .then(function (body) {
        (body.alerts || []).slice().reverse().forEach(function (a) { showAlert(a, true); });
      })
      .catch(function () {});
  }

  if (shareMode) {
    document.body.classList.add('share');
    el('share').hidden = false;
    ['fleet-tools', 'alerts-section', 'geofence-note'].forEach(function (id) { el(id).hidden = true; });
    loadShare().then(connect);
  } else {
    Promise.all([loadVehicles(), loadAlerts()]).then(connect);
    loadGeofences();
  }
})();
