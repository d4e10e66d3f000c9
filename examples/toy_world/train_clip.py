"""Pretrains the toy world's CLIP on its "clip" split: image–caption pairs drawn fresh each step.

    python examples/toy_world/train_clip.py                      # writes vdl_diffusion/toy/weights/clip
    python examples/toy_world/train_clip.py --output_dir /tmp/clip --steps 300

The model is a stock transformers ``CLIPModel`` (ViT with 8×8 patches on 32×32 images, a small
text transformer, a BPE tokenizer trained on the world's words) so every ``from_pretrained`` path
of the toolkit is the one used with ``openai/clip-vit-*``. Its logit scale is frozen at 100, as in
OpenAI CLIP after training; with partial captions this keeps the geometry of real CLIP: matched
image–caption cosines far below 1 (0.37 here, 0.31 for OpenAI CLIP on COCO) and a modality gap
between the image and text cones (1.01 here, 0.82 for OpenAI CLIP). Sparse captions name the
position too seldom for the CLIP to find it, so for the first 400 steps every caption names it
(``--position_curriculum_steps``). The defaults reproduce the shipped weights.
"""

import argparse
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

from vdl_diffusion.files import atomic_folder
from vdl_diffusion.tokenization import train_clip_tokenizer
from vdl_diffusion.toy import TOY_CLIP, ToyWorld

MAX_TOKENS = 32  # the longest caption is about 20 tokens
TOKENIZER_STREAM = 10**9  # "clip" split stream for the tokenizer corpus, apart from the training steps


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", type=Path, default=TOY_CLIP, help="where save_pretrained writes model, tokenizer, processor")
    parser.add_argument("--seed", type=int, default=0, help="world seed and torch seed")
    parser.add_argument("--steps", type=int, default=1200, help="optimisation steps (each draws a fresh batch)")
    parser.add_argument("--batch_size", type=int, default=256, help="pairs per contrastive batch")
    parser.add_argument("--learning_rate", type=float, default=1e-3, help="peak AdamW learning rate (cosine decay)")
    parser.add_argument("--warmup_steps", type=int, default=100, help="linear learning-rate warm-up")
    parser.add_argument("--logit_scale", type=float, default=100.0, help="fixed temperature 1/τ (OpenAI CLIP ends at 100)")
    parser.add_argument("--width", type=int, default=96, help="hidden size of both transformers")
    parser.add_argument("--vision_layers", type=int, default=4, help="ViT depth")
    parser.add_argument("--patch_size", type=int, default=8, help="ViT patch size (32 must be a multiple of it)")
    parser.add_argument("--text_layers", type=int, default=2, help="text transformer depth")
    parser.add_argument("--projection_dim", type=int, default=64, help="joint embedding dimension D")
    parser.add_argument("--position_curriculum_steps", type=int, default=400,
                        help="name the position in every caption for the first N steps (with sparse captions alone the CLIP may never learn it)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads; the shipped weights come from 1 (another count sums in another order and trains a slightly different CLIP)")
    args = parser.parse_args()
    if args.patch_size < 1 or 32 % args.patch_size:
        parser.error(f"--patch_size must divide the 32-pixel images (1, 2, 4, 8, 16 or 32), got {args.patch_size}.")
    return args


def build_clip(tokenizer, args) -> CLIPModel:
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=args.width,
            intermediate_size=2 * args.width,
            num_hidden_layers=args.text_layers,
            num_attention_heads=4,
            max_position_embeddings=MAX_TOKENS,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            projection_dim=args.projection_dim,  # the *WithProjection classes read it from here
        ),
        vision_config=dict(
            image_size=32,
            patch_size=args.patch_size,
            hidden_size=args.width,
            intermediate_size=2 * args.width,
            num_hidden_layers=args.vision_layers,
            num_attention_heads=4,
            projection_dim=args.projection_dim,
        ),
        projection_dim=args.projection_dim,
        logit_scale_init_value=math.log(args.logit_scale),
    )
    model = CLIPModel(config)
    model.logit_scale.requires_grad_(False)
    return model


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    world = ToyWorld(args.seed)

    # The tokenizer learns the world's words from CLIP's own captions and the unpaired prior texts.
    corpus = world.sample(20_000, "clip", rng=TOKENIZER_STREAM).captions + world.prior_texts()
    tokenizer = train_clip_tokenizer(corpus, vocab_size=512)
    tokenizer.model_max_length = MAX_TOKENS
    # Images stay 32×32 (no upscaling to 224); OpenAI's normalisation constants are kept.
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    mean = torch.tensor(processor.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(processor.image_std).view(1, 3, 1, 1)

    model = build_clip(tokenizer, args)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.learning_rate, weight_decay=0.1)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: min(1.0, (step + 1) / args.warmup_steps) * 0.5 * (1 + math.cos(math.pi * step / args.steps)),
    )
    labels = torch.arange(args.batch_size)
    progress = tqdm(range(args.steps), desc="clip")
    for step in progress:
        curriculum = {"position": 1.0} if step < args.position_curriculum_steps else None
        batch = world.sample(args.batch_size, "clip", rng=step, mention_probability=curriculum)
        pixels = (torch.from_numpy(batch.images).permute(0, 3, 1, 2).float() / 255 - mean) / std
        tokens = tokenizer(batch.captions, padding=True, return_tensors="pt")
        logits = model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask, pixel_values=pixels).logits_per_image
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        schedule.step()
        progress.set_postfix(loss=f"{loss.item():.3f}")

    with atomic_folder(args.output_dir) as folder:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        processor.save_pretrained(folder)
    print(f"saved to {args.output_dir}")


if __name__ == "__main__":
    main()
