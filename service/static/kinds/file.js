// The widget of a kind without one of its own: a file chooser, a text box where the input is a value, a preview.
export function mount(page, kind, info) {
  const card = document.getElementById("input-card").content.firstElementChild.cloneNode(true);
  const q = (sel) => card.querySelector(sel);
  card.id = `${kind}-card`;
  card.dataset.modality = kind;
  q("legend").textContent = kind.charAt(0).toUpperCase() + kind.slice(1);
  q(".hint").textContent = `${info.description.charAt(0).toUpperCase()}${info.description.slice(1)}.`;
  const input = q(".file-input");
  input.id = `${kind}-file`;
  input.accept = info.accept || "";
  const chooser = q(".file-actions label");
  chooser.htmlFor = input.id;
  chooser.textContent = `Choose ${/^[aeiou]/.test(kind) ? "an" : "a"} ${kind} file`;
  const clear = q(".clear");
  clear.id = `${kind}-clear`;
  q(".clear .sr-only").textContent = ` the ${kind}`;
  const clip = q(".clip");
  clip.id = `${kind}-clip`;
  const name = q(".name");
  name.id = `${kind}-name`;
  const preview = q(".picture-preview");
  preview.id = `${kind}-image`;
  preview.alt = `The ${kind} chosen`;
  let box = null;
  if (info.field === "value") {
    box = q("textarea");
    box.id = `${kind}-value`;
    const label = q(".value-label");
    label.htmlFor = box.id;
    label.textContent = `Type the ${kind}, or choose a file of it`;
    q(".value-actions").hidden = false;
    const limit = info.limits && info.limits.max_bytes;
    box.addEventListener("input", () => {
      const text = box.value;
      page.state.clips[kind] = text.trim() ? { text } : null;
      if (limit && new TextEncoder().encode(text).length > limit) {
        page.showError({ status: 413, code: "too_large", message: `The ${kind} is longer than ${limit} bytes.`, note: "Checked here." });
      } else page.hideError();
      page.updateControls();
    });
  }
  input.addEventListener("change", () => {
    const file = input.files && input.files[0];
    if (file) page.setClip(kind, file, file.name, "file");
    input.value = "";
  });
  clear.addEventListener("click", () => page.clearClip(kind));
  return {
    card,
    show(c) {
      preview.hidden = !c.blob.type.startsWith("image/");
      if (!preview.hidden) preview.src = c.url;
      if (box) box.value = "";
      name.textContent = `${c.name} · ${page.formatBytes(c.blob.size)} · ${c.source}`;
      clip.hidden = false;
    },
    hide() {
      preview.removeAttribute("src");
      clip.hidden = true;
    },
  };
}
