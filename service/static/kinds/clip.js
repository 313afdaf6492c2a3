// What the audio and video widgets share: a file chooser, a preview the browser may not be able to play, a name
// line with a Remove button. The markup uses the ids KIND-file, KIND-preview, KIND-noplay, KIND-name, KIND-clear
// and KIND-clip inside `card`.
export function clipControls(page, kind, card) {
  const q = (suffix) => card.querySelector(`#${kind}-${suffix}`);
  const preview = q("preview");
  preview.addEventListener("error", () => {
    // Chromium plays neither MPEG-4 Part 2 nor FLV, say; only the preview is lost.
    const c = page.state.clips[kind];
    if (c && preview.src === c.url) {
      preview.hidden = true;
      q("noplay").hidden = false;
    }
  });
  const input = q("file");
  input.addEventListener("change", () => {
    const file = input.files && input.files[0];
    if (file) page.setClip(kind, file, file.name, "file");
    input.value = ""; // choosing the same file again still fires change
  });
  q("clear").addEventListener("click", () => page.clearClip(kind));
  return {
    show(c) {
      q("noplay").hidden = true;
      preview.hidden = false;
      preview.src = c.url;
      q("name").textContent = `${c.name} · ${page.formatBytes(c.blob.size)} · ${c.source}`;
      q("clip").hidden = false;
    },
    hide() {
      preview.removeAttribute("src");
      q("clip").hidden = true;
    },
  };
}
