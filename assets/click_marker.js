// Marks feel live: the click point is drawn on the canvas the moment the pointer goes down, in the
// tool's colour, and removed when the server's next picture (the point and the mask) replaces it.
(() => {
  const COLOURS = { "Object (click)": "#22c55e", "Background (click)": "#ef4444", "Box (2 clicks)": "#3b82f6" };
  document.addEventListener(
    "pointerdown",
    (event) => {
      const picture = event.target.closest ? event.target.closest("#canvas img") : null;
      if (!picture) return;
      const tool = document.querySelector("#tool input:checked");
      const colour = COLOURS[tool ? tool.value : ""];
      if (!colour) return;
      const holder = picture.parentElement;
      if (getComputedStyle(holder).position === "static") holder.style.position = "relative";
      const place = holder.getBoundingClientRect();
      const marker = document.createElement("div");
      marker.className = "click-marker";
      marker.style.left = `${event.clientX - place.left}px`;
      marker.style.top = `${event.clientY - place.top}px`;
      marker.style.background = colour;
      holder.appendChild(marker);
      const source = picture.getAttribute("src");
      const done = () => {
        marker.remove();
        watch.disconnect();
      };
      // The next picture from the server: a new src on this image, or a new image in its place.
      const watch = new MutationObserver(() => {
        if (!picture.isConnected || picture.getAttribute("src") !== source) done();
      });
      watch.observe(holder.closest("#canvas"), { subtree: true, childList: true, attributes: true, attributeFilter: ["src"] });
      setTimeout(done, 15000); // a refused click changes no picture
    },
    true,
  );
})();
