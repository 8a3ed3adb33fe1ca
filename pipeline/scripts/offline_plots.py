"""An HTML template for ``dvc plots show`` that works offline (no CDN).

DVC's default page loads vega, vega-lite and vega-embed from a CDN, so offline it is blank. This writes a
template with those libraries inlined (the bundle that the ``vl-convert-python`` package ships) and no
``{scripts}`` placeholder, so DVC adds no CDN tags:

    python -m pipeline.scripts.offline_plots            # -> .dvc/tmp/offline_plots.html
    dvc plots show --html-template .dvc/tmp/offline_plots.html --out .dvc/tmp/plots

(``make plots`` does both; the page is ``.dvc/tmp/plots/index.html``, beside its images in ``static/``, inside
``.dvc/tmp`` which git and DVC ignore. Without ``--out``, DVC writes ``dvc_plots/`` in the working tree, which
``.gitignore`` lists.) The template is generated, not committed (about 0.9 MB).
"""
from __future__ import annotations

import argparse
from pathlib import Path

TEMPLATE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>DVC Plot (offline)</title>
    <script type="text/javascript">
{bundle}
    </script>
    <style>
        table {{ border-spacing: 15px; }}
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>"""


def offline_template() -> str:
    import vl_convert as vlc

    bundle = vlc.javascript_bundle(snippet="window.vegaEmbed = vegaEmbed;")
    bundle = bundle.replace("</script", "<\\/script")  # must not end the inline script early
    for placeholder in ("{plot_divs}", "{scripts}", "{refresh_tag}"):
        if placeholder in bundle:
            raise RuntimeError(f"the vega bundle contains DVC's placeholder {placeholder}; cannot inline it")
    return (TEMPLATE.replace("{{", "\x00").replace("}}", "\x01").replace("{bundle}", bundle)
            .replace("\x00", "{").replace("\x01", "}"))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=".dvc/tmp/offline_plots.html")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(offline_template())
    print(f"{out}: use `dvc plots show --html-template {out}`")


if __name__ == "__main__":
    main()
