// Marks feel live, and no click is lost. The click point is drawn on the canvas the moment the pointer goes
// down, in the tool's colour, and removed when the server's next picture (the point and the mask) replaces
// it. Gradio sends a canvas click only when the picture under it is decoded (it maps the click through the
// image's natural size), nothing covers it, and no earlier click of the canvas is still being answered; a
// click that misses one of these is kept here and replayed, oldest first, once the picture is shown, at the
// same place on it. A click that cannot be applied, or gets no picture back, says so instead of leaving a
// dot behind.
(() => {
  const COLOURS = { "Object (click)": "#22c55e", "Background (click)": "#ef4444", "Box (2 clicks)": "#3b82f6" };
  const COVER = '#canvas [data-testid="status-tracker"]:not(.hide)';
  const MARKING = '#mark-info [data-testid="status-tracker"]:not(.hide)';
  const QUEUED_FOR_MS = 20000;
  const ANSWER_WITHIN_MS = 15000;
  const SENT_WITHIN_MS = 700;
  const CHECK_EVERY_MS = 100;
  const TRIES = 3;

  // Which page events the browser sent, by the index Gradio gives them: a click on the canvas is a "select"
  // event, and one that was not sent is kept and replayed.
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

  // The status line's own text (not Gradio's progress drawn over it).
  const statusText = () => {
    const text = document.querySelector('#mark-info [data-testid="markdown"]');
    return text ? text.innerText : "";
  };

  // New media on its way (a file given to the canvas or the clip opener, an example tapped): until the
  // server has answered, the picture shown is not yet the one clicks are made on. The answer is a new status
  // line, or the canvas's progress shown and then gone (for a moment longer than Gradio's flicker between
  // sending an event and its place in the queue).
  let mediaPending = false;
  let mediaWatch = 0;
  const mediaStarted = () => {
    mediaPending = true;
    const before = statusText();
    const started = Date.now();
    let coverSeen = false;
    let clearSince = 0;
    clearInterval(mediaWatch);
    mediaWatch = setInterval(() => {
      const now = Date.now();
      if (document.querySelector(COVER)) {
        coverSeen = true;
        clearSince = 0;
      } else if (coverSeen && !clearSince) {
        clearSince = now;
      }
      const answered = statusText() !== before || (clearSince && now - clearSince >= 3 * CHECK_EVERY_MS);
      if (answered || now - started > QUEUED_FOR_MS) {
        clearInterval(mediaWatch);
        mediaPending = false;
      }
    }, CHECK_EVERY_MS / 2);
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

  // The size of the last picture the canvas showed: a picture that replaces it (the server's copy of an
  // upload) is not decoded at once, and a click on it meanwhile is placed by the one the visitor saw.
  let lastSize = null;
  const decoded = (img) => img.complete && img.naturalWidth > 0;
  const sizeOf = (img) => (decoded(img) ? { width: img.naturalWidth, height: img.naturalHeight } : lastSize);
  document.addEventListener("load", (event) => {
    const img = event.target;
    if (img.matches && img.matches("#canvas img") && decoded(img)) lastSize = sizeOf(img);
  }, true);

  const toolColour = () => {
    const tool = document.querySelector("#tool input:checked");
    return COLOURS[tool ? tool.value : ""];
  };

  // Where the picture is drawn inside its element ("contain", never enlarged), for a picture of `size`.
  const drawn = (img, size) => {
    const r = img.getBoundingClientRect();
    const scale = Math.min(r.width / size.width, r.height / size.height, 1);
    const width = size.width * scale, height = size.height * scale;
    return { left: r.left + (r.width - width) / 2, top: r.top + (r.height - height) / 2, width, height };
  };

  // Where a click fell on the picture, as fractions of it: null outside it, undefined when no picture's size
  // is known yet.
  const fractions = (event, img) => {
    const size = sizeOf(img);
    if (!size) return undefined;
    const box = drawn(img, size);
    const fx = (event.clientX - box.left) / box.width, fy = (event.clientY - box.top) / box.height;
    return fx >= 0 && fx <= 1 && fy >= 0 && fy <= 1 ? { fx, fy } : null;
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
  const CLICK_AGAIN = "Your click could not be placed on the picture; please click again.";

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

  // Clicks kept for later, oldest first, each {at, colour, marker, since, tries}; one is replayed at a time,
  // once nothing covers a decoded picture and the one replayed before was sent, for two checks in a row
  // (Gradio's progress flickers off between an event's request and its place in the queue). A click Gradio
  // dropped also waits until the canvas's click before it is answered, or Gradio would drop it again.
  const waiting = [];
  let replaying = null;
  let inFlight = false;
  let steady = 0;
  let poller = 0;
  const keep = (click, first) => {
    if (!click.marker) {
      click.marker = showMarker(document.querySelector("#canvas"), click.x, click.y, click.colour, true);
    }
    first ? waiting.unshift(click) : waiting.push(click);
    if (!poller) poller = setInterval(replayNext, CHECK_EVERY_MS);
  };
  const replayNext = () => {
    const now = Date.now();
    while (waiting.length && now - waiting[0].since > QUEUED_FOR_MS) {
      waiting.shift().marker.remove();
      say("The picture took too long to arrive: your click was not applied. Please click again.");
    }
    if (!waiting.length) {
      clearInterval(poller);
      poller = 0;
      return;
    }
    const click = waiting[0];
    const picture = document.querySelector("#canvas img");
    const ready = !inFlight && !mediaPending && picture && decoded(picture) && !document.querySelector(COVER)
      && !(click.tries && document.querySelector(MARKING));
    steady = ready ? steady + 1 : 0;
    if (steady < 2) return;
    steady = 0;
    waiting.shift();
    click.marker.remove();
    const box = drawn(picture, sizeOf(picture));
    const x = box.left + click.at.fx * box.width, y = box.top + click.at.fy * box.height;
    const options = { bubbles: true, cancelable: true, clientX: x, clientY: y, pointerType: "mouse" };
    replaying = click;
    picture.dispatchEvent(new PointerEvent("pointerdown", options));
    if (replaying) { // not taken as a mark (the tool changed to the brush meanwhile)
      replaying = null;
      return;
    }
    picture.dispatchEvent(new MouseEvent("click", options));
  };

  // A visitor's click that is kept: Gradio must not also get it (it would send it for the old picture).
  let swallowClick = false;
  window.addEventListener("click", (event) => {
    if (swallowClick && event.isTrusted) {
      swallowClick = false;
      event.preventDefault();
      event.stopImmediatePropagation();
    }
  }, true);

  document.addEventListener(
    "pointerdown",
    (event) => {
      const click = replaying;
      if (event.isTrusted) swallowClick = false;
      const canvas = event.target.closest ? event.target.closest("#canvas") : null;
      if (!canvas || event.target.closest("button, a, input, label")) return;
      const colour = toolColour();
      const img = canvas.querySelector("img");
      if (!colour || !img) return;
      const at = click ? click.at : fractions(event, img);
      if (at === null) return; // beside the picture: not a mark, here or for Gradio
      const placing = document.querySelector(COVER) || mediaPending || !decoded(img) || inFlight || waiting.length;
      if (!click && (placing || at === undefined)) {
        swallowClick = true;
        if (at === undefined) {
          say(CLICK_AGAIN);
          return;
        }
        keep({ at, colour, x: event.clientX, y: event.clientY, since: Date.now(), tries: 0 }, false);
        say("The picture is still being placed: your click will be applied as soon as it is shown.");
        return;
      }
      if (click) {
        replaying = null; // taken: the next one waits until this one was sent
        inFlight = true;
      }
      const holder = img.parentElement;
      const marker = showMarker(holder, event.clientX, event.clientY, colour, false);
      const source = img.getAttribute("src");
      const clickedAt = Date.now();
      let answered = false;
      const done = () => {
        answered = true;
        marker.remove();
        watch.disconnect();
      };
      // Sent, or not: Gradio drops a click while the canvas's previous one is still being answered.
      setTimeout(() => {
        if (click) inFlight = false;
        if (answered || selectSentAt >= clickedAt || canvasSelect() < 0) return;
        done();
        const tries = click ? click.tries + 1 : 1;
        if (tries > TRIES) {
          say(CLICK_AGAIN);
          return;
        }
        const since = click ? click.since : clickedAt;
        keep({ at, colour, x: event.clientX, y: event.clientY, since, tries }, true);
      }, SENT_WITHIN_MS);
      // The next picture from the server: a new src on this image, or a new image in its place.
      const watch = new MutationObserver(() => {
        if (!img.isConnected || img.getAttribute("src") !== source) done();
      });
      watch.observe(canvas, { subtree: true, childList: true, attributes: true, attributeFilter: ["src"] });
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
