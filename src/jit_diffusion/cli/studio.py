"""``jit studio``: the flags and the start of the studio's local web page (:mod:`jit_diffusion.studio`)."""

from __future__ import annotations

import argparse

from ..core.errors import UserError, at_least
from ..studio.limits import DEFAULT_MAX_IMAGES, DEFAULT_MAX_STEPS, DEFAULT_MAX_UPLOAD_MB, Limits


def run_studio(args: argparse.Namespace) -> None:
    if args.port > 65535:
        raise UserError(f"--port must be in 1..65535, got {args.port}")
    from ..studio.session import Studio

    limits = Limits(max_images=args.max_images, max_steps=args.max_steps, max_upload_mb=args.max_upload_mb)
    studio = Studio(args.model_path, device=args.device, limits=limits)  # a bad source fails before the server
    try:
        from ..studio.app import serve
    except ModuleNotFoundError as err:
        if err.name != "gradio":
            raise
        raise UserError("jit studio needs Gradio: pip install 'jit-diffusion[studio]'") from None
    print(f"jit studio: {args.model_path} on {studio.device}; open http://{args.host}:{args.port} "
          + ("(and the public link below)" if args.share else "(this machine only)" if args.host == "127.0.0.1"
             else "(reachable from the network)"))  # fmt: skip
    serve(studio, host=args.host, port=args.port, share=args.share)


def add_cli(sub) -> None:
    p = sub.add_parser("studio", help="a local web page to sample, compare settings and look at a run (studio extra)",
                       description="Start a local web page (Gradio) for a model: generate a grid, compare two "
                                   "settings on the same noise, and for a run folder its preview grids and loss.")
    p.add_argument("model_path", help="run folder, checkpoint .pt, exported folder, official .pth or diffusers folder")
    p.add_argument("--port", type=at_least(1), default=7860, help="port to serve on (default 7860)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 opens it to the network)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--share", action="store_true",
                   help="also publish a temporary public link through Gradio's share servers (off by default)")
    p.add_argument("--max-images", type=at_least(1), default=DEFAULT_MAX_IMAGES,
                   help=f"most images one request may ask for (default {DEFAULT_MAX_IMAGES})")
    p.add_argument("--max-steps", type=at_least(1), default=DEFAULT_MAX_STEPS,
                   help=f"most ODE steps one request may ask for (default {DEFAULT_MAX_STEPS})")
    p.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB,
                   help=f"largest file the page accepts, in MB (default {DEFAULT_MAX_UPLOAD_MB:g})")
    p.set_defaults(func=run_studio)
