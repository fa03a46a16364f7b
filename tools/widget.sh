#!/usr/bin/env bash
# Builds the amoCRM widget archive (integrations/amocrm-widget/) into DIR: the
# manifest, the texts, the script and the logos amoCRM asks for, drawn here (no
# image is kept in the repository). Usage: tools/widget.sh DIR
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:?usage: tools/widget.sh DIR}"
mkdir -p "$out"
python3 - "$root/integrations/amocrm-widget" "$out/crmessenger-widget.zip" <<'PY'
import json, struct, sys, zipfile, zlib
src, dest = sys.argv[1], sys.argv[2]

def png(w, h, rgb=(0x2a, 0x7a, 0xe2)):
    row = b"\x00" + bytes(rgb) * w
    raw = row * h
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xffffffff)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")

manifest = json.load(open(f"{src}/manifest.json"))
assert "lead_sources" in manifest["locations"], "the manifest must list lead_sources"
logos = {"logo.png": (130, 100), "logo_min.png": (84, 84), "logo_medium.png": (240, 84),
         "logo_main.png": (400, 272), "logo_small.png": (108, 108), "logo_dp.png": (174, 109)}
with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as z:
    for name in ("manifest.json", "script.js", "i18n/en.json", "i18n/ru.json"):
        z.write(f"{src}/{name}", name)
    for name, (w, h) in logos.items():
        z.writestr(f"images/{name}", png(w, h))
print(dest)
PY
