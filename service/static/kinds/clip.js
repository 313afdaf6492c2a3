// What the audio and video widgets share: their card, a file chooser, a preview the browser may not be able to play,
// a name line with a Remove button. The markup uses the ids KIND-file, KIND-preview, KIND-noplay, KIND-name,
// KIND-clear and KIND-clip inside `card`.

/** The widget's card: its own `markup`, then the clip's preview (`player`: an audio or video element's attributes). */
export function clipCard(kind, markup, player) {
  const card = document.createElement("fieldset");
  card.id = `${kind}-card`;
  card.className = "card";
  card.innerHTML = `${markup}
  <div id="${kind}-clip" class="clip" hidden>
    <${player} id="${kind}-preview" preload="metadata"></${player.split(" ")[0]}>
    <p class="hint" id="${kind}-noplay" hidden>This browser cannot play the file here; the service decodes it with FFmpeg all the same.</p>
    <p class="clip-name"><span id="${kind}-name"></span>
      <button type="button" id="${kind}-clear" class="link-button">Remove<span class="sr-only"> the ${kind}</span></button></p>
  </div>`;
  return card;
}

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
