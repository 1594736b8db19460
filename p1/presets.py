"""The ViT presets that --model names, as VisionTransformer keyword arguments.

Apart from the model, which imports torch and timm, so that train.py's --help and its argument
errors come at once rather than after seconds of imports. timm's defaults (LayerNorm eps 1e-6,
exact GELU, qkv bias, [CLS]-token pooling) are those of pytorch-pretrained-vit's B_16_imagenet1k.
"""
PRESETS = {
    "B_16_imagenet1k": dict(img_size=(384, 384), patch_size=16, embed_dim=768, depth=12,
                            num_heads=12, mlp_ratio=4.0),
    # 64-dimensional heads like every ViT, so a bare state dict of it is rebuilt exactly
    "tiny": dict(img_size=(64, 64), patch_size=8, embed_dim=128, depth=4, num_heads=2,
                 mlp_ratio=4.0),
}
