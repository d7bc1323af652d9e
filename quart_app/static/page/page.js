/* The upload page: sign in with an API key, upload through tus
 * (tus-js-client), list, download and delete the owner's files.
 *
 * Rules this file keeps (README "The browser page"):
 * - the key lives in sessionStorage only and travels only in the
 *   Authorization header, never in a URL;
 * - text from the server or the user (file names, problem details) is set
 *   with textContent, never parsed as HTML;
 * - no inline script or style, no eval: the page's CSP forbids them.
 */
"use strict";

(function () {
  const KEY_ITEM = "quart_app.api-key";
  // Relative to the page, which sits at the API's root: behind a proxy that
  // serves the app under a path prefix, the page follows it.
  const UPLOADS = new URL("uploads", window.location.href).href;
  // Pieces of this size per PATCH: a proxy's body limit is never met, and a
  // cut costs at most one piece (the server keeps the bytes that arrived anyway).
  const CHUNK_BYTES = 8 * 1024 * 1024;
  // tus-js-client retries a failed request after these delays (ms); past
  // them, a network failure waits for the network (waitForNetwork).
  const RETRY_DELAYS = [0, 1000, 2000, 4000, 8000];
  const NETWORK_RETRY_MS = 3000;
  const SPEED_WINDOW_MS = 4000;
  const PAGE_SIZE = 100; // QUART_APP_PAGE_SIZE_MAX's default
  const MAX_PAGES = 20; // the page lists at most this many pages of files
  const LINK_SECONDS = 120; // a download link's life: enough to start the download

  const $ = (id) => document.getElementById(id);
  const el = (tag, attrs, text) => {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
    if (text !== undefined) node.textContent = text;
    return node;
  };

  let apiKey = null;
  const entries = new Set();
  const listed = new Map(); // file id -> <li>

  // -- talking to the API --------------------------------------------------
  function authHeaders(extra) {
    return Object.assign({ Authorization: "Bearer " + apiKey }, extra || {});
  }

  function api(url, init) {
    const options = Object.assign({ cache: "no-store" }, init || {});
    options.headers = authHeaders(options.headers);
    return fetch(url, options);
  }

  /* The words a problem+json answer gives (its detail, else its title). */
  function problemWords(status, text) {
    try {
      const problem = JSON.parse(text);
      if (problem && (problem.detail || problem.title)) return String(problem.detail || problem.title);
    } catch (_e) {
      /* not JSON: fall through */
    }
    return "The server answered " + status + ".";
  }

  async function responseWords(response) {
    return problemWords(response.status, await response.text());
  }

  function announce(text) {
    $("announce").textContent = text;
  }

  // -- sizes, speeds, times -------------------------------------------------
  function bytes(n) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) {
      n /= 1024;
      i += 1;
    }
    return (i === 0 ? String(n) : n.toFixed(1)) + " " + units[i];
  }

  function duration(seconds) {
    if (!isFinite(seconds)) return "…";
    seconds = Math.max(0, Math.round(seconds));
    if (seconds < 60) return seconds + " s";
    const minutes = Math.floor(seconds / 60);
    if (minutes < 60) return minutes + " min " + (seconds % 60) + " s";
    return Math.floor(minutes / 60) + " h " + (minutes % 60) + " min";
  }

  // -- signing in -----------------------------------------------------------
  async function signIn(key) {
    apiKey = key;
    let response;
    try {
      response = await api("files?limit=" + PAGE_SIZE);
    } catch (_e) {
      apiKey = null;
      return "The server cannot be reached.";
    }
    if (!response.ok) {
      apiKey = null;
      return await responseWords(response);
    }
    sessionStorage.setItem(KEY_ITEM, key);
    $("sign-in-section").hidden = true;
    $("signed-in").hidden = false;
    $("who").hidden = false;
    listFiles(await response.json());
    offerResumes();
    return null;
  }

  function signOut() {
    for (const entry of entries) entry.pause();
    sessionStorage.removeItem(KEY_ITEM);
    apiKey = null;
    window.location.reload();
  }

  // -- the owner's files ----------------------------------------------------
  function fileItem(file) {
    const li = el("li", { "data-file-id": file.id });
    const about = el("div");
    about.append(el("div", { class: "filename" }, file.filename || file.id));
    const meta = el("div", { class: "meta" });
    const when = el("time", { datetime: file.created_at }, new Date(file.created_at).toLocaleString());
    meta.append(bytes(file.size) + " · " + (file.content_type || "unknown type") + " · ", when);
    about.append(meta);
    const actions = el("div", { class: "actions" });
    const name = file.filename || file.id;
    const download = el("a", {
      href: file.links.content,
      download: name,
      class: "download",
      "aria-label": "Download " + name,
    }, "Download");
    download.addEventListener("click", (event) => {
      event.preventDefault();
      downloadFile(file, name);
    });
    const remove = el("button", { type: "button", class: "danger", "aria-label": "Delete " + name }, "Delete");
    remove.addEventListener("click", () => confirmDelete(file, name, li));
    actions.append(download, remove);
    li.append(about, actions);
    return li;
  }

  function showFile(file, first) {
    const old = listed.get(file.id);
    const li = fileItem(file);
    if (old) old.replaceWith(li);
    else if (first) $("files").prepend(li);
    else $("files").append(li);
    listed.set(file.id, li);
    updateFilesStatus();
  }

  function updateFilesStatus() {
    const status = $("files-status");
    if (!listed.size) status.textContent = "No files yet.";
    else if (status.textContent === "No files yet.") status.textContent = "";
  }

  /* Every page of the owner's files, up to MAX_PAGES. The API lists the
   * oldest first; each is put on top, so the newest ends up first. */
  async function listFiles(page) {
    $("files").replaceChildren();
    listed.clear();
    updateFilesStatus();
    for (let pages = 1; ; pages += 1) {
      for (const file of page.items) showFile(file, true);
      if (!page.next) return;
      if (pages >= MAX_PAGES) {
        $("files-status").textContent =
          "Only the first " + listed.size + " files are listed here; GET /files lists them all.";
        return;
      }
      const response = await api(page.next);
      if (!response.ok) {
        $("files-status").textContent = await responseWords(response);
        return;
      }
      page = await response.json();
    }
  }

  /* A download never puts the key in a URL. First choice: a signed link
   * (POST /files/{id}/links) living LINK_SECONDS, which the browser follows
   * and streams to disk. Where links are refused (none left for the file,
   * an older server), the bytes are fetched with the key in a header and
   * saved from a blob: URL (held in memory: fine for what a page uploads). */
  async function downloadFile(file, name) {
    announce("Downloading " + name + "…");
    let url = null;
    let blobUrl = null;
    const link = await api(file.links.self + "/links", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ expires_in: LINK_SECONDS }),
    }).catch(() => null);
    if (link && link.status === 201) {
      url = (await link.json()).url;
    } else {
      const response = await api(file.links.content);
      if (!response.ok) {
        announce(await responseWords(response));
        return;
      }
      url = blobUrl = URL.createObjectURL(await response.blob());
    }
    const anchor = el("a", { href: url, download: name, hidden: "" });
    document.body.append(anchor);
    anchor.click();
    anchor.remove();
    if (blobUrl) setTimeout(() => URL.revokeObjectURL(blobUrl), 60000);
    announce("Downloading " + name + ": see the browser's downloads.");
  }

  function confirmDelete(file, name, li) {
    const dialog = $("confirm-delete");
    $("confirm-name").textContent = name;
    dialog.returnValue = "";
    dialog.addEventListener(
      "close",
      async () => {
        if (dialog.returnValue !== "delete") return;
        const response = await api(file.links.self, { method: "DELETE" });
        if (response.ok || response.status === 404) {
          li.remove();
          listed.delete(file.id);
          updateFilesStatus();
          announce(name + " was deleted.");
        } else {
          announce(await responseWords(response));
        }
      },
      { once: true },
    );
    dialog.showModal();
  }

  async function showFinished(uploadUrl) {
    const id = uploadUrl.split("/").pop();
    const response = await api("files/" + encodeURIComponent(id));
    if (response.ok) showFile(await response.json(), true);
  }

  // -- one upload -----------------------------------------------------------
  class Entry {
    constructor(file) {
      this.file = file;
      this.state = "starting";
      this.samples = [];
      this.waitTimer = null;
      const name = file.name;
      this.li = el("li", { "data-state": "starting" });
      const about = el("div");
      about.append(el("div", { class: "filename" }, name));
      this.stats = el("div", { class: "stats" }, "0 B of " + bytes(file.size));
      this.stateText = el("div", { class: "state", role: "status" }, "Starting…");
      about.append(this.stats, this.stateText);
      const actions = el("div", { class: "actions" });
      this.toggle = el("button", { type: "button", class: "pause", "aria-label": "Pause " + name }, "Pause");
      this.toggle.addEventListener("click", () => (this.state === "paused" ? this.resume() : this.pause()));
      this.cancelButton = el("button", { type: "button", class: "danger cancel", "aria-label": "Cancel " + name }, "Cancel");
      this.cancelButton.addEventListener("click", () => this.cancel());
      actions.append(this.toggle, this.cancelButton);
      this.bar = el("progress", { max: "100", value: "0", "aria-label": "Progress of " + name });
      this.li.append(about, actions, this.bar);

      const metadata = { filename: name };
      if (file.type) metadata.filetype = file.type;
      this.upload = new tus.Upload(file, {
        endpoint: UPLOADS,
        chunkSize: CHUNK_BYTES,
        retryDelays: RETRY_DELAYS,
        metadata: metadata,
        headers: authHeaders(),
        removeFingerprintOnSuccess: true,
        onShouldRetry: (error) => this.shouldRetry(error),
        onProgress: (sent, total) => this.progress(sent, total),
        onSuccess: () => this.done(),
        onError: (error) => this.failed(error),
      });
    }

    setState(state, text) {
      this.state = state;
      this.li.setAttribute("data-state", state);
      this.stateText.textContent = text;
      const active = state === "uploading" || state === "starting" || state === "waiting";
      const paused = state === "paused";
      this.toggle.hidden = !(active || paused);
      this.toggle.textContent = paused ? "Resume" : "Pause";
      this.toggle.setAttribute("aria-label", (paused ? "Resume " : "Pause ") + this.file.name);
      this.cancelButton.hidden = !(active || paused);
      updateBulk();
    }

    get live() {
      return ["starting", "uploading", "waiting", "paused"].includes(this.state);
    }

    async start() {
      this.setState("starting", "Starting…");
      // A file chosen again after a reload (or a cut) goes on from the
      // offset the server has for it, found by its fingerprint.
      const previous = await this.upload.findPreviousUploads();
      if (previous.length) {
        this.upload.resumeFromPreviousUpload(previous[0]);
        removeOffer(previous[0].uploadUrl);
      }
      if (this.state === "starting") this.upload.start();
    }

    shouldRetry(error) {
      const status = error.originalResponse ? error.originalResponse.getStatus() : 0;
      // 409 (offset moved), 423 (another PATCH still ends), 429 and 5xx are
      // worth another try; 507 (quota, storage full) and other 4xx are answers.
      const retry = status === 0 || status === 409 || status === 423 || status === 429 ||
        (status >= 500 && status !== 507);
      if (retry && status === 0) this.setState("waiting", "Connection lost: trying again…");
      return retry;
    }

    progress(sent, total) {
      if (!this.live || this.state === "paused") return;
      const now = performance.now();
      this.samples.push([now, sent]);
      while (this.samples.length > 2 && now - this.samples[0][0] > SPEED_WINDOW_MS) this.samples.shift();
      const [t0, b0] = this.samples[0];
      const speed = now > t0 ? ((sent - b0) * 1000) / (now - t0) : 0;
      const percent = total ? Math.floor((sent * 100) / total) : 100;
      this.bar.value = percent;
      let text = bytes(sent) + " of " + bytes(total) + " (" + percent + " %)";
      if (speed > 0) text += " · " + bytes(speed) + "/s · " + duration((total - sent) / speed) + " left";
      this.stats.textContent = text;
      if (this.state !== "uploading") this.setState("uploading", "Uploading");
    }

    pause() {
      if (!this.live || this.state === "paused") return;
      clearTimeout(this.waitTimer);
      this.upload.abort();
      this.samples = [];
      this.setState("paused", "Paused");
    }

    resume() {
      if (this.state !== "paused") return;
      this.setState("starting", "Resuming…");
      this.upload.start();
    }

    async cancel() {
      if (!this.live) return;
      clearTimeout(this.waitTimer);
      this.setState("canceled", "Canceled");
      try {
        await this.upload.abort(true); // DELETE /uploads/{id}: the server drops the bytes
      } catch (_e) {
        /* the upload expires on the server in any case */
      }
      entries.delete(this);
      this.li.remove();
      updateBulk();
      announce(this.file.name + " was canceled.");
    }

    done() {
      this.bar.value = 100;
      this.stats.textContent = bytes(this.file.size) + " of " + bytes(this.file.size) + " (100 %)";
      this.setState("done", "Uploaded");
      announce(this.file.name + " is uploaded.");
      showFinished(this.upload.url);
    }

    failed(error) {
      const response = error.originalResponse;
      if (!response || response.getStatus() === 0) {
        this.waitForNetwork();
        return;
      }
      const status = response.getStatus();
      const words = problemWords(status, response.getBody());
      const refused = status === 413 || status === 507 || status === 415 || status === 400;
      this.setState(refused ? "refused" : "failed", (refused ? "Refused: " : "Failed: ") + words);
    }

    /* The browser is offline or the server unreachable past tus-js-client's
     * retries: try again when the browser says it is back, or every few
     * seconds; the next start asks the server for its offset (HEAD). */
    waitForNetwork() {
      this.setState("waiting", "Connection lost: waiting for the network…");
      const again = () => {
        window.removeEventListener("online", again);
        clearTimeout(this.waitTimer);
        if (this.state === "waiting") {
          this.samples = [];
          this.upload.start();
        }
      };
      window.addEventListener("online", again);
      this.waitTimer = setTimeout(again, NETWORK_RETRY_MS);
    }
  }

  /* The button opens the file picker (a <button>: mouse, Enter or Space). */
  function opensPicker(button) {
    button.addEventListener("click", () => $("file-input").click());
  }

  function addFiles(fileList) {
    for (const file of Array.from(fileList)) {
      const entry = new Entry(file);
      entries.add(entry);
      $("uploads").append(entry.li);
      entry.start();
    }
    updateBulk();
  }

  function updateBulk() {
    const live = Array.from(entries).filter((e) => e.live);
    $("bulk").hidden = live.length === 0;
  }

  // -- unfinished uploads after a reload ------------------------------------
  const offers = new Map(); // upload URL -> <li>

  function removeOffer(url) {
    const li = offers.get(url);
    if (li) li.remove();
    offers.delete(url);
    $("resumable").hidden = offers.size === 0;
  }

  /* tus-js-client noted each unfinished upload's URL in localStorage (URLs
   * only, never the key). Those the server still has for this key are
   * offered: choosing the same file again goes on from the server's offset. */
  async function offerResumes() {
    const storage = tus.defaultOptions.urlStorage;
    let stored = [];
    try {
      stored = await storage.findAllUploads();
    } catch (_e) {
      return;
    }
    for (const item of stored) {
      if (!item.uploadUrl || !item.uploadUrl.startsWith(UPLOADS + "/") || offers.has(item.uploadUrl)) continue;
      let response;
      try {
        response = await api(item.uploadUrl, { method: "HEAD", headers: { "Tus-Resumable": "1.0.0" } });
      } catch (_e) {
        continue;
      }
      if (response.status === 410) storage.removeUpload(item.urlStorageKey);
      if (!response.ok) continue; // gone, or another account's (404)
      const offset = Number(response.headers.get("Upload-Offset") || 0);
      const length = Number(response.headers.get("Upload-Length") || item.size || 0);
      if (length && offset >= length) continue;
      const name = (item.metadata && item.metadata.filename) || "unnamed file";
      const li = el("li");
      const about = el("div");
      about.append(el("div", { class: "filename" }, name));
      const percent = length ? Math.floor((offset * 100) / length) : 0;
      about.append(el("div", { class: "meta" }, bytes(offset) + " of " + bytes(length) + " (" + percent + " %) on the server"));
      const actions = el("div", { class: "actions" });
      const resume = el("button", { type: "button", class: "resume-offer", "aria-label": "Resume " + name }, "Choose file to resume");
      opensPicker(resume);
      const discard = el("button", { type: "button", class: "danger", "aria-label": "Discard " + name }, "Discard");
      discard.addEventListener("click", async () => {
        await api(item.uploadUrl, { method: "DELETE", headers: { "Tus-Resumable": "1.0.0" } });
        await storage.removeUpload(item.urlStorageKey);
        removeOffer(item.uploadUrl);
      });
      actions.append(resume, discard);
      li.append(about, actions);
      offers.set(item.uploadUrl, li);
      $("resumable-list").append(li);
      $("resumable").hidden = false;
    }
  }

  // -- wiring ---------------------------------------------------------------
  function wire() {
    $("sign-in").addEventListener("submit", async (event) => {
      event.preventDefault();
      const key = $("api-key").value.trim();
      if (!key) {
        $("sign-in-error").textContent = "Enter an API key.";
        return;
      }
      $("sign-in-button").disabled = true;
      $("sign-in-error").textContent = "";
      const error = await signIn(key);
      $("sign-in-button").disabled = false;
      if (error) $("sign-in-error").textContent = error;
      else $("api-key").value = "";
    });
    $("sign-out").addEventListener("click", signOut);

    const zone = $("drop-zone");
    const input = $("file-input");
    opensPicker(zone);
    input.addEventListener("change", () => {
      addFiles(input.files);
      input.value = "";
    });
    zone.addEventListener("dragenter", (event) => {
      event.preventDefault();
      zone.setAttribute("data-over", "yes");
    });
    zone.addEventListener("dragover", (event) => {
      event.preventDefault();
      event.dataTransfer.dropEffect = "copy";
    });
    zone.addEventListener("dragleave", () => zone.removeAttribute("data-over"));
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      zone.removeAttribute("data-over");
      if (event.dataTransfer && event.dataTransfer.files.length) addFiles(event.dataTransfer.files);
    });
    // A file dropped beside the zone must not make the browser leave the page.
    window.addEventListener("dragover", (event) => event.preventDefault());
    window.addEventListener("drop", (event) => event.preventDefault());

    $("pause-all").addEventListener("click", () => entries.forEach((e) => e.pause()));
    $("resume-all").addEventListener("click", () => entries.forEach((e) => e.resume()));
    $("cancel-all").addEventListener("click", () => Array.from(entries).forEach((e) => e.cancel()));
  }

  async function boot() {
    wire();
    const key = sessionStorage.getItem(KEY_ITEM);
    if (key) {
      const error = await signIn(key);
      if (error) {
        sessionStorage.removeItem(KEY_ITEM);
        $("sign-in-error").textContent = error;
      }
    }
    document.body.setAttribute("data-ready", "yes");
  }

  boot();
})();
