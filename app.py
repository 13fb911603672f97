"""gen3d Gradio app.

Today it prepares an input the way the model sees it: upload a photo, choose object or person, and
see the preprocessed 256x256 input with a list of what was done to it (background removal,
recentring, format conversions). Generation is added on top of this page.

    python app.py [--port 7860] [--share]
"""

from __future__ import annotations

import argparse
import os

import gradio as gr

BORDER_DEFAULTS = {"object": 0.45, "person": 0.227}


def prepare_input(path: str | None, kind: str, remove_background: bool, border_ratio: float):
    """Upload -> (preprocessed image, report). Bad input raises gr.Error with the reason."""
    from gen3d.cli import keep_everything
    from gen3d.export import to_uint8
    from gen3d.preprocess import InvalidImageError, preprocess

    if not path:
        raise gr.Error("Please upload an image first.")
    try:
        result = preprocess(path, border_ratio=border_ratio, remover="auto" if remove_background else keep_everything)
    except InvalidImageError as err:
        raise gr.Error(f"This file cannot be used: {err}") from err
    report = "\n".join(f"- {step}" for step in result.steps)
    if result.fallback_reason:
        report += f"\n\n**Note:** {result.fallback_reason}"
    return to_uint8(result.image[0]), report


def build_demo() -> gr.Blocks:
    with gr.Blocks(title="gen3d: image to 3D with synchronized 2D and 3D diffusion") as demo:
        gr.Markdown("# gen3d\nOne photo of an object or a person → 3D Gaussian splats (Gen-3Diffusion). "
                    "Step 1: prepare the input.")
        with gr.Row():
            with gr.Column():
                upload = gr.Image(type="filepath", label="Photo (PNG, JPEG, WebP)", image_mode=None)
                kind = gr.Radio(["object", "person"], value="object", label="What is in the photo?")
                remove_bg = gr.Checkbox(value=True, label="Remove the background (if the image has no alpha)")
                border = gr.Slider(0.0, 0.8, value=BORDER_DEFAULTS["object"], step=0.005,
                                   label="Border ratio (empty margin around the subject)")
                button = gr.Button("Prepare input", variant="primary")
            with gr.Column():
                prepared = gr.Image(label="Model input (256×256)", interactive=False)
                report = gr.Markdown(label="What was done")
        kind.change(lambda k: BORDER_DEFAULTS[k], kind, border, api_name=False)
        button.click(prepare_input, [upload, kind, remove_bg, border], [prepared, report], api_name="prepare")
    return demo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--share", action="store_true")
    args = parser.parse_args()
    build_demo().queue(default_concurrency_limit=2).launch(server_name=args.host, server_port=args.port,
                                                          share=args.share, max_file_size="20mb", show_error=True)


if __name__ == "__main__":
    main()
