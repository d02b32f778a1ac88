// Marks feel live, and no click is lost. The click point is drawn on the canvas the moment the pointer goes
// down, in the tool's colour, and removed when the server's next picture (the point and the mask) replaces
// it. A click that lands while a new picture is still being placed (Gradio's overlay covers the canvas) is
// kept and replayed on the picture once it is there, at the same place on it; a click that gets no picture
// back says so instead of leaving a dot behind.
(() => {
  const COLOURS = { "Object (click)": "#22c55e", "Background (click)": "#ef4444", "Box (2 clicks)": "#3b82f6" };
  const COVER = '#canvas [data-testid="status-tracker"]:not(.hide)';
  const QUEUED_FOR_MS = 20000;
  const ANSWER_WITHIN_MS = 15000;

  // Which page events the browser sent, by the index Gradio gives them: a click on the canvas is a "select"
  // event; one the page never sent (it arrived while a new picture was being set) is kept and replayed.
  let selectSentAt = 0;
  const canvasSelect = () => {
    const config = window.gradio_config;
    if (!config) return -1;
    const canvas = (config.components || []).find((c) => c.props && c.props.elem_id === "canvas");
    if (!canvas) return -1;
    return (config.dependencies || []).findIndex((d) =>
      (d.targets || []).some((t) => t[0] === canvas.id && t[1] === "select"));
  };
  const fetchAsSent = window.fetch;
  window.fetch = function (input, init) {
    try {
      const url = typeof input === "string" ? input : input.url;
      if (url.includes("/queue/join") && init && typeof init.body === "string") {
        const body = JSON.parse(init.body);
        if (body.fn_index === canvasSelect()) selectSentAt = Date.now();
      }
    } catch (error) {
      // not a request this script follows
    }
    return fetchAsSent.apply(this, arguments);
  };
  const SENT_WITHIN_MS = 700;

  // New media on its way (a file given to the canvas or the clip opener, an example tapped): until the
  // server's answer rewrites the status line, the picture shown is not yet the one clicks are made on.
  let mediaPending = false;
  const mediaStarted = () => {
    mediaPending = true;
    const info = document.querySelector("#mark-info");
    if (!info) return;
    const before = info.innerText;
    const watch = new MutationObserver(() => {
      if (info.innerText === before) return;
      watch.disconnect();
      requestAnimationFrame(() => { mediaPending = false; });
    });
    watch.observe(info, { subtree: true, childList: true, characterData: true });
    setTimeout(() => { watch.disconnect(); mediaPending = false; }, QUEUED_FOR_MS);
  };
  document.addEventListener("change", (event) => {
    if (event.target.matches && event.target.matches("#canvas input[type=file], input[type=file][accept*=video]")) mediaStarted();
  }, true);
  document.addEventListener("drop", (event) => {
    if (event.target.closest && event.target.closest("#canvas")) mediaStarted();
  }, true);
  document.addEventListener("click", (event) => {
    if (event.isTrusted && event.target.closest && event.target.closest("#examples .thumbnail-item")) mediaStarted();
  }, true);

  const toolColour = () => {
    const tool = document.querySelector("#tool input:checked");
    return COLOURS[tool ? tool.value : ""];
  };

  // Where a point is on the picture itself (the image is drawn "contain" inside its element), as fractions.
  const drawn = (img) => {
    const r = img.getBoundingClientRect();
    const scale = Math.min(r.width / img.naturalWidth, r.height / img.naturalHeight, 1);
    const width = img.naturalWidth * scale, height = img.naturalHeight * scale;
    return { left: r.left + (r.width - width) / 2, top: r.top + (r.height - height) / 2, width, height };
  };

  const say = (text) => {
    const info = document.querySelector("#mark-info");
    if (!info) return;
    let note = document.querySelector("#click-note");
    if (!note) {
      note = document.createElement("div");
      note.id = "click-note";
      note.setAttribute("role", "status");
      info.parentElement.insertBefore(note, info);
    }
    note.textContent = text;
    clearTimeout(note.hideTimer);
    note.hideTimer = setTimeout(() => note.remove(), 6000);
  };

  const showMarker = (holder, x, y, colour, queued) => {
    if (getComputedStyle(holder).position === "static") holder.style.position = "relative";
    const place = holder.getBoundingClientRect();
    const marker = document.createElement("div");
    marker.className = queued ? "click-marker queued" : "click-marker";
    marker.style.left = `${x - place.left}px`;
    marker.style.top = `${y - place.top}px`;
    marker.style.background = colour;
    holder.appendChild(marker);
    return marker;
  };

  // Where a click fell on the picture, as fractions of it (null outside the picture).
  const fractions = (event, img) => {
    const box = drawn(img);
    const fx = (event.clientX - box.left) / box.width, fy = (event.clientY - box.top) / box.height;
    return fx >= 0 && fx <= 1 && fy >= 0 && fy <= 1 ? { fx, fy } : null;
  };

  // A click on a picture being placed: replayed once the new picture is shown and nothing covers it.
  const queue = (event, at, source, colour, waitForNewPicture) => {
    if (!at) return;
    const { fx, fy } = at;
    const canvas = document.querySelector("#canvas");
    const marker = showMarker(canvas, event.clientX, event.clientY, colour, true);
    say("The picture is still being placed: your click will be applied as soon as it is shown.");
    const started = Date.now();
    const timer = setInterval(() => {
      const picture = document.querySelector("#canvas img");
      const placed = !mediaPending && (!waitForNewPicture || (picture && picture.getAttribute("src") !== source)
        || Date.now() - started > 5000);
      const ready = placed && picture && picture.complete && picture.naturalWidth > 0
        && !document.querySelector(COVER);
      if (!ready && Date.now() - started < QUEUED_FOR_MS) return;
      clearInterval(timer);
      marker.remove();
      if (!ready) {
        say("The picture took too long to arrive: your click was not applied. Please click again.");
        return;
      }
      const now = drawn(picture);
      const x = now.left + fx * now.width, y = now.top + fy * now.height;
      const options = { bubbles: true, cancelable: true, clientX: x, clientY: y, pointerType: "mouse" };
      picture.dispatchEvent(new PointerEvent("pointerdown", options));
      picture.dispatchEvent(new MouseEvent("click", options));
    }, 100);
  };

  document.addEventListener(
    "pointerdown",
    (event) => {
      const canvas = event.target.closest ? event.target.closest("#canvas") : null;
      if (!canvas) return;
      const colour = toolColour();
      if (!colour) return;
      const img = canvas.querySelector("img");
      const covered = document.querySelector(COVER) || mediaPending;
      if (covered && img && img.naturalWidth > 0 && event.isTrusted) {
        queue(event, fractions(event, img), img.getAttribute("src"), colour, false);
        return;
      }
      const picture = event.target.closest("#canvas img");
      if (!picture) return;
      const holder = picture.parentElement;
      const marker = showMarker(holder, event.clientX, event.clientY, colour, false);
      const source = picture.getAttribute("src");
      const clickedAt = Date.now();
      const at = fractions(event, picture);
      let answered = false;
      if (event.isTrusted) {
        setTimeout(() => {
          if (answered || selectSentAt >= clickedAt || canvasSelect() < 0) return;
          done(); // the page did not send this click: kept, and applied once the new picture is there
          queue(event, at, source, colour, true);
        }, SENT_WITHIN_MS);
      }
      const done = () => {
        answered = true;
        marker.remove();
        watch.disconnect();
      };
      // The next picture from the server: a new src on this image, or a new image in its place.
      const watch = new MutationObserver(() => {
        if (!picture.isConnected || picture.getAttribute("src") !== source) done();
      });
      watch.observe(holder.closest("#canvas"), { subtree: true, childList: true, attributes: true, attributeFilter: ["src"] });
      setTimeout(() => {
        if (answered) return;
        done();
        // A refused click changes no picture but says why in a toast or the status line; a click that got
        // nothing at all is said here.
        if (!document.querySelector(".toast-body")) say("This click got no answer from the server; please click again.");
      }, ANSWER_WITHIN_MS);
    },
    true,
  );
})();
