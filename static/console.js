// fleetrun console behaviour that htmx does not cover: selection and the batch bar, tabs,
// the modal (focus, Esc, Tab trap), the editor (Tab indents, size counter), copy buttons and
// keeping live output scrolled. No inline scripts anywhere (the CSP forbids them).
(function () {
  "use strict";

  function selectionChanged() {
    var boxes = document.querySelectorAll('#instances input[name="instance_ids"]');
    var checked = document.querySelectorAll('#instances input[name="instance_ids"]:checked');
    var bar = document.getElementById("batch-bar");
    if (bar) {
      bar.hidden = checked.length === 0;
      document.getElementById("selected-count").textContent = checked.length + " selected";
    }
    var all = document.getElementById("select-all");
    if (all) {
      all.checked = boxes.length > 0 && checked.length === boxes.length;
      all.indeterminate = checked.length > 0 && checked.length < boxes.length;
    }
  }

  function closeModal() {
    var modal = document.getElementById("modal");
    if (modal && modal.firstChild) {
      modal.innerHTML = "";
      if (window.lastFocus && document.body.contains(window.lastFocus)) window.lastFocus.focus();
    }
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

  document.addEventListener("change", function (e) {
    var t = e.target;
    if (t.id === "select-all") {
      document.querySelectorAll('#instances input[name="instance_ids"]').forEach(function (b) { b.checked = t.checked; });
    }
    if (t.matches('#instances input[type="checkbox"], #select-all')) selectionChanged();
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
    if (t.hasAttribute("data-close-modal")) closeModal();
    if (t.getAttribute("role") === "tab") {
      document.querySelectorAll('[role="tab"]').forEach(function (tab) {
        var on = tab === t;
        tab.setAttribute("aria-selected", String(on));
        var panel = document.getElementById(tab.getAttribute("aria-controls"));
        if (panel) panel.hidden = !on;
      });
    }
    if (t.classList.contains("copy-output")) {
      var source = document.getElementById(t.dataset.target);
      if (source && navigator.clipboard) navigator.clipboard.writeText(source.textContent);
      t.textContent = "Copied";
      setTimeout(function () { t.textContent = "Copy"; }, 1500);
    }
  });

  document.addEventListener("mousedown", function (e) {
    if (e.target.classList && e.target.classList.contains("modal-backdrop")) closeModal();
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
    var dialog = document.querySelector("#modal .modal");
    if (!dialog) return;
    if (e.key === "Escape") { closeModal(); return; }
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

  document.addEventListener("htmx:beforeRequest", function (e) {
    if (e.detail.target && e.detail.target.id === "modal") window.lastFocus = document.activeElement;
  });

  document.addEventListener("htmx:afterSwap", function (e) {
    if (e.detail.target && e.detail.target.id === "modal") {
      var dialog = document.querySelector("#modal .modal");
      if (dialog) {
        var editor = dialog.querySelector("textarea.editor");
        var first = editor || focusables(dialog)[0];
        if (first) first.focus();
        dialog.querySelectorAll("textarea.editor").forEach(updateCounter);
      }
    }
    if (document.getElementById("instances")) selectionChanged();
  });

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
  });

  document.addEventListener("DOMContentLoaded", selectionChanged);
})();
