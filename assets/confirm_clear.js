// Nothing is lost by one stray tap: the canvas's × (which starts over: picture, objects and chat) and the
// chat's trash button ask first when there is work to lose. The question is asked before Gradio sees the
// click (capture phase), so "Cancel" leaves everything as it was.
(() => {
  const ASK = [
    { button: '#canvas button[aria-label="Remove Image"], #canvas button[aria-label="Clear"]',
      work: () => document.querySelectorAll('#objects .chip, #chat [data-testid="bot"]').length > 0,
      question: "Start over? The picture, its objects and the chat will be removed." },
    { button: '#chat button[aria-label="Clear"]',
      work: () => document.querySelectorAll('#chat [data-testid="bot"]').length > 0,
      question: "Clear the chat? The objects stay." },
  ];
  document.addEventListener(
    "click",
    (event) => {
      for (const rule of ASK) {
        const button = event.target.closest ? event.target.closest(rule.button) : null;
        if (button && rule.work() && !window.confirm(rule.question)) {
          event.preventDefault();
          event.stopImmediatePropagation();
          return;
        }
      }
    },
    true,
  );
})();
