// fleetrun console behaviour that htmx does not cover: the instance selection (kept across pages
// and reloads, per region), "select all matching", the Send Command dialog's picker, the modal
// (focus, Esc, Tab trap), the editor (Tab indents, size counter), live durations, local times,
// copy buttons and keeping live output scrolled. No inline scripts anywhere (the CSP forbids them).
(function () {
  "use strict";

  // ---- The Instances page's selection: ids in sessionStorage, one set per region. ----

  function region() {
    var picker = document.getElementById("region");
    return picker ? picker.value : "";
  }

  function loadSelection() {
    try {
      return new Set(JSON.parse(sessionStorage.getItem("fleetrun.selection." + region()) || "[]"));
    } catch (e) {
      return new Set();
    }
  }

  function saveSelection(ids) {
    sessionStorage.setItem("fleetrun.selection." + region(), JSON.stringify(Array.from(ids)));
  }

  function pageBoxes() {
    return document.querySelectorAll('#instances input[name="instance_ids"]');
  }

  // Ticks the boxes of selected instances and redraws the batch bar and the header box.
  function showSelection() {
    var table = document.getElementById("instances");
    if (!table) return;
    var ids = loadSelection();
    var boxes = pageBoxes(), checked = 0;
    boxes.forEach(function (b) { b.checked = ids.has(b.value); if (b.checked) checked++; });
    var all = document.getElementById("select-all");
    if (all) {
      all.checked = boxes.length > 0 && checked === boxes.length;
      all.indeterminate = checked > 0 && checked < boxes.length;
    }
    var bar = document.getElementById("batch-bar");
    if (bar) {
      bar.hidden = ids.size === 0;
      var onPage = checked === ids.size ? "" : " (" + checked + " on this page)";
      document.getElementById("selected-count").textContent = ids.size + " selected" + onPage;
      var matching = document.getElementById("select-matching");
      if (matching) matching.hidden = ids.size >= parseInt(table.dataset.matching, 10);
    }
  }

  function fetchMatching(url) {
    return fetch(url, { credentials: "same-origin" }).then(function (r) {
      if (!r.ok) throw new Error("HTTP " + r.status);
      return r.json();
    });
  }

  // Opens a dialog (Send Command: /console/send/open; Send File: /console/files/new) for the
  // selected instances; posted, as thousands of ids would overflow a URL.
  function openDialog(url, ids) {
    window.lastFocus = document.activeElement;
    htmx.ajax("POST", url, {
      source: document.body,
      target: "#modal",
      swap: "innerHTML",
      values: { instance_ids: Array.from(ids).join(",") }
    });
  }

  // ---- The Send Command dialog's picker: the selection is the hidden #selected-ids. ----

  function picked() {
    var field = document.getElementById("selected-ids");
    return new Set(field && field.value ? field.value.split(",") : []);
  }

  function setPicked(ids) {
    var field = document.getElementById("selected-ids");
    if (!field) return;
    field.value = Array.from(ids).join(",");
    var summary = document.getElementById("selected-summary");
    if (summary) summary.textContent = ids.size + " selected";
    showPicked();
    document.body.dispatchEvent(new Event("picked"));
  }

  function showPicked() {
    var ids = picked();
    document.querySelectorAll("#instance-picker input[data-pick]").forEach(function (b) { b.checked = ids.has(b.value); });
  }

  // ---- The modal ----

  var editorsAtOpen = "";

  function editorText() {
    return Array.prototype.map.call(document.querySelectorAll("#modal textarea.editor"), function (e) { return e.value; }).join("\u0000");
  }

  function closeModal(ask) {
    var modal = document.getElementById("modal");
    if (!modal || !modal.firstChild) return;
    if (ask && editorText() !== editorsAtOpen && !window.confirm("Discard the command you typed?")) return;
    modal.innerHTML = "";
    if (window.lastFocus && document.body.contains(window.lastFocus)) window.lastFocus.focus();
  }

  function focusables(root) {
    return Array.prototype.filter.call(
      root.querySelectorAll('a[href], button:not([disabled]), input:not([disabled]):not([type="hidden"]), select, textarea, [tabindex="0"]'),
      function (el) { return el.offsetParent !== null; });
  }

  function updateCounter(editor) {
    var counter = document.querySelector('[data-counter-for="' + editor.id + '"]');
    if (!counter) return;
    var bytes = new TextEncoder().encode(editor.value).length;
    var limit = parseInt(editor.dataset.limit, 10);
    counter.textContent = bytes + " / " + limit + " bytes";
    counter.classList.toggle("over", bytes > limit);
  }

  // ---- Times and durations ----

  function pad(n) { return (n < 10 ? "0" : "") + n; }

  // `<time datetime>` in the reader's own time zone; the UTC text stays in the tooltip.
  function localiseTimes(root) {
    (root || document).querySelectorAll("time[datetime]:not([data-local])").forEach(function (t) {
      var d = new Date(t.getAttribute("datetime"));
      if (isNaN(d)) return;
      t.textContent = d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " +
        pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
      t.setAttribute("data-local", "");
    });
  }

  // As the server writes durations: 850 ms, 3.2 s, 4 min 05 s.
  function duration(ms) {
    if (ms < 1000) return Math.max(0, ms) + " ms";
    if (ms < 60000) return (ms / 1000).toFixed(1) + " s";
    return Math.floor(ms / 60000) + " min " + pad(Math.floor((ms % 60000) / 1000)) + " s";
  }

  function tickDurations() {
    var now = Date.now();
    document.querySelectorAll("td[data-running-since]").forEach(function (td) {
      td.textContent = duration(now - Date.parse(td.dataset.runningSince));
    });
  }
  setInterval(tickDurations, 1000);

  // ---- Events ----

  document.addEventListener("change", function (e) {
    var t = e.target;
    if (t.id === "select-all") {
      var ids = loadSelection();
      pageBoxes().forEach(function (b) { if (t.checked) ids.add(b.value); else ids.delete(b.value); });
      saveSelection(ids);
      showSelection();
    } else if (t.matches('#instances input[name="instance_ids"]')) {
      var sel = loadSelection();
      if (t.checked) sel.add(t.value); else sel.delete(t.value);
      saveSelection(sel);
      showSelection();
    } else if (t.matches("#instance-picker input[data-pick]")) {
      var p = picked();
      if (t.checked) p.add(t.value); else p.delete(t.value);
      setPicked(p);
    }
    // A radio group whose choices each show their own part (data-shows="id", or "" for none).
    if (t.type === "radio" && t.name && t.dataset && t.dataset.shows !== undefined) {
      document.querySelectorAll('input[type=radio][name="' + t.name + '"]').forEach(function (r) {
        var part = r.dataset.shows && document.getElementById(r.dataset.shows);
        if (part) part.hidden = !r.checked;
      });
    }
    if (t.dataset && t.dataset.toggles) {
      var target = document.getElementById(t.dataset.toggles);
      if (target) target.hidden = !t.checked;
    }
  });

  document.addEventListener("click", function (e) {
    var t = e.target.closest("button, [data-close-modal], [role=tab]");
    var menu = document.getElementById("more-menu");
    if (t && t.id === "more-button") {
      menu.hidden = !menu.hidden;
      t.setAttribute("aria-expanded", String(!menu.hidden));
      if (!menu.hidden) menu.querySelector("button").focus();
      return;
    }
    if (menu && !menu.hidden) menu.hidden = true;
    if (!t) return;
    if (t.hasAttribute("data-close-modal")) closeModal(true);
    if (t.hasAttribute("data-send-selection")) openDialog("/console/send/open", loadSelection());
    if (t.hasAttribute("data-send-file-selection")) openDialog("/console/files/new", loadSelection());
    if (t.hasAttribute("data-add-tags")) {
      var form = document.getElementById("add-tags-form");
      form.hidden = false;
      document.getElementById("add-tags-input").focus();
    }
    var inPicker = t.closest("#instance-picker");
    if (t.hasAttribute("data-select-matching")) {
      var source = inPicker || document.getElementById("instances");
      t.disabled = true;
      fetchMatching(source.dataset.matchingUrl).then(function (found) {
        if (inPicker) {
          var p = picked();
          found.ids.forEach(function (id) { p.add(id); });
          setPicked(p);
        } else {
          var ids = loadSelection();
          found.ids.forEach(function (id) { ids.add(id); });
          saveSelection(ids);
          showSelection();
        }
      }).catch(function (err) {
        window.alert("Could not select the matching instances: " + err.message);
      }).finally(function () { t.disabled = false; });
    }
    if (t.hasAttribute("data-select-none")) {
      if (inPicker) setPicked(new Set());
      else { saveSelection(new Set()); showSelection(); }
    }
    if (t.getAttribute("role") === "tab") {
      document.querySelectorAll('[role="tab"]').forEach(function (tab) {
        var on = tab === t;
        tab.setAttribute("aria-selected", String(on));
        var panel = document.getElementById(tab.getAttribute("aria-controls"));
        if (panel) panel.hidden = !on;
      });
    }
    if (t.classList.contains("copy-output")) {
      var copied = document.getElementById(t.dataset.target);
      if (copied && navigator.clipboard) navigator.clipboard.writeText(copied.textContent);
      t.textContent = "Copied";
      setTimeout(function () { t.textContent = "Copy"; }, 1500);
    }
  });

  document.addEventListener("mousedown", function (e) {
    if (e.target.classList && e.target.classList.contains("modal-backdrop")) closeModal(true);
  });

  var escapedEditor = null;
  document.addEventListener("keydown", function (e) {
    var editor = e.target.closest && e.target.closest("textarea.editor");
    if (editor && e.key === "Escape") {
      // In the editor, Esc first releases Tab so keyboard users can leave it; a second Esc closes.
      if (escapedEditor !== editor) { escapedEditor = editor; e.stopPropagation(); return; }
    }
    if (editor && e.key === "Tab" && !e.shiftKey && escapedEditor !== editor) {
      e.preventDefault();
      var start = editor.selectionStart, end = editor.selectionEnd;
      editor.value = editor.value.slice(0, start) + "\t" + editor.value.slice(end);
      editor.selectionStart = editor.selectionEnd = start + 1;
      updateCounter(editor);
      return;
    }
    if (editor && e.key !== "Tab" && e.key !== "Shift") escapedEditor = null;
    // Enter in a one-line field of the dialog (Timeout, a search, a parameter) does not Run.
    if (e.key === "Enter" && e.target.matches && e.target.matches("#send-form input")) {
      e.preventDefault();
      return;
    }
    var dialog = document.querySelector("#modal .modal");
    if (!dialog) return;
    if (e.key === "Escape") { closeModal(true); return; }
    if (e.key === "Tab") {
      var items = focusables(dialog);
      if (!items.length) return;
      var first = items[0], last = items[items.length - 1];
      if (e.shiftKey && document.activeElement === first) { e.preventDefault(); last.focus(); }
      else if (!e.shiftKey && document.activeElement === last) { e.preventDefault(); first.focus(); }
    }
  });

  document.addEventListener("input", function (e) {
    if (e.target.matches && e.target.matches("textarea.editor")) updateCounter(e.target);
  });

  // The batch bar's Add Tags sends the whole selection (kept here, not in the page).
  document.addEventListener("htmx:configRequest", function (e) {
    if (e.detail.elt && e.detail.elt.id === "add-tags-form") {
      e.detail.parameters.instance_ids = Array.from(loadSelection()).join(",");
    }
  });

  document.addEventListener("htmx:beforeRequest", function (e) {
    var modal = document.getElementById("modal");
    if (e.detail.target && e.detail.target.id === "modal" && modal && !modal.firstChild) {
      window.lastFocus = document.activeElement;
    }
  });

  document.addEventListener("htmx:afterSwap", function (e) {
    if (e.detail.target && e.detail.target.id === "modal") {
      var dialog = document.querySelector("#modal .modal");
      if (dialog) {
        var editor = dialog.querySelector("textarea.editor");
        var search = dialog.querySelector("#picker-search");
        var first = search || editor || focusables(dialog)[0];
        if (first) first.focus();
        dialog.querySelectorAll("textarea.editor").forEach(updateCounter);
        editorsAtOpen = editorText();
      }
    }
    showSelection();
    showPicked();
  });

  document.addEventListener("htmx:load", function (e) { localiseTimes(e.detail.elt); });

  // Keep live output pinned to the bottom while the reader is there.
  var pinned = new Map();
  document.addEventListener("htmx:wsBeforeMessage", function () {
    document.querySelectorAll("pre.output").forEach(function (pre) {
      pinned.set(pre.id, pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 8);
    });
  });
  document.addEventListener("htmx:wsAfterMessage", function () {
    document.querySelectorAll("pre.output").forEach(function (pre) {
      if (pinned.get(pre.id) !== false) pre.scrollTop = pre.scrollHeight;
    });
    localiseTimes();
  });

  document.addEventListener("DOMContentLoaded", function () {
    showSelection();
    localiseTimes();
    tickDurations();
  });
})();

// Send File: the upload goes with XMLHttpRequest, whose upload progress feeds the dialog's
// progress bar (fetch cannot report it); the answer is the results fragment, which htmx then
// refreshes until every instance's result is final.
document.addEventListener('submit', function (event) {
  var form = event.target;
  if (form.id !== 'file-form') return;
  event.preventDefault();
  var bar = document.getElementById('file-progress');
  var text = document.getElementById('file-progress-text');
  var result = document.getElementById('file-result');
  var button = document.getElementById('file-send-button');
  var xhr = new XMLHttpRequest();
  button.disabled = true;
  xhr.upload.addEventListener('progress', function (e) {
    if (!e.lengthComputable) return;
    bar.max = e.total;
    bar.value = e.loaded;
    text.textContent = 'Uploading ' + Math.floor((100 * e.loaded) / e.total) + '%';
  });
  xhr.addEventListener('load', function () {
    bar.value = bar.max;
    text.textContent = xhr.status < 300 ? 'Uploaded' : '';
    result.innerHTML = xhr.responseText;
    if (window.htmx) window.htmx.process(result);
    button.disabled = false;
  });
  xhr.addEventListener('error', function () {
    text.textContent = 'The upload failed: the connection to the server was lost.';
    button.disabled = false;
  });
  xhr.open('POST', '/console/files');
  var headers = JSON.parse(document.body.getAttribute('hx-headers') || '{}');
  Object.keys(headers).forEach(function (name) { xhr.setRequestHeader(name, headers[name]); });
  xhr.send(new FormData(form));
});
