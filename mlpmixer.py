"""MLP-Mixer (Tolstikhin et al., 2021) for small images."""
import os

import numpy as np
from torch import nn


class PatchEmbed(nn.Module):
    """ Image to Patch Embedding
    """
    def __init__(self, img_size, patch_size, in_chans=3, embed_dim=768):
        """Cut the image into non-overlapping patches and project each to ``embed_dim``.

        Args:
            img_size: height and width of the (square) input image.
            patch_size: height and width of a patch; must divide ``img_size``.
            in_chans: input channels.
            embed_dim: size of each patch embedding.
        """
        super().__init__()
        self.img_size = img_size
        self.patch_size = patch_size
        self.grid_size = img_size // patch_size
        self.num_patches = self.grid_size ** 2
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        _, _, H, W = x.shape
        assert H == self.img_size, f"Input image height ({H}) doesn't match model ({self.img_size})."
        assert W == self.img_size, f"Input image width ({W}) doesn't match model ({self.img_size})."
        x = self.proj(x)                  # [B, embed_dim, grid, grid]
        x = x.flatten(2).transpose(1, 2)  # [B, num_patches, embed_dim]
        return x


class Mlp(nn.Module):
    """ MLP as used in Vision Transformer, MLP-Mixer and related networks
    """
    def __init__(self, in_features, hidden_features, act_layer=nn.GELU, drop=0.):
        """
        Args:
            in_features: input and output size.
            hidden_features: hidden size.
            act_layer: activation class.
            drop: dropout probability after the activation and after the output.
        """
        super().__init__()
        out_features = in_features
        hidden_features = hidden_features

        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, out_features)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x):
        x = self.fc1(x)
        x = self.act(x)
        x = self.drop1(x)
        x = self.fc2(x)
        x = self.drop2(x)
        return x


class DropPath(nn.Module):
    def __init__(self, drop_prob=0.):
        """Stochastic depth: drop a residual branch for whole samples during training.

        Args:
            drop_prob: probability of dropping the branch for a sample.
        """
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x):
        if self.drop_prob == 0. or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class MixerBlock(nn.Module):
    """ Residual Block w/ token mixing and channel MLPs
    Based on: 'MLP-Mixer: An all-MLP Architecture for Vision' - https://arxiv.org/abs/2105.01601
    """
    def __init__(
            self, dim, seq_len, mlp_ratio=(0.5, 4.0),
            activation='gelu', drop=0., drop_path=0.):
        """
        Args:
            dim: channels of each token.
            seq_len: number of tokens (patches).
            mlp_ratio: hidden sizes of the token and channel MLPs, as multiples of ``dim``.
            activation: ``'gelu'`` or ``'relu'``.
            drop: dropout probability inside both MLPs.
            drop_path: stochastic-depth probability of each residual branch.
        """
        super().__init__()
        act_layer = {'gelu': nn.GELU, 'relu': nn.ReLU}[activation]
        tokens_dim, channels_dim = int(mlp_ratio[0] * dim), int(mlp_ratio[1] * dim)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)  # norm1 used with mlp_tokens
        self.mlp_tokens = Mlp(seq_len, tokens_dim, act_layer=act_layer, drop=drop)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)  # norm2 used with mlp_channels
        self.mlp_channels = Mlp(dim, channels_dim, act_layer=act_layer, drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x):
        # x [B, tokens, channels]; token mixing acts across tokens, so it sees [B, channels, tokens]
        x = x + self.drop_path(self.mlp_tokens(self.norm1(x).transpose(1, 2)).transpose(1, 2))
        x = x + self.drop_path(self.mlp_channels(self.norm2(x)))
        return x


class MLPMixer(nn.Module):
    def __init__(self, num_classes, img_size, patch_size, embed_dim, num_blocks,
                 drop_rate=0., activation='gelu'):
        """Patch embedding, ``num_blocks`` mixer blocks, layer norm, mean over tokens, linear head.

        Args:
            num_classes: number of output logits.
            img_size: height and width of the input image.
            patch_size: patch side; must divide ``img_size``.
            embed_dim: channels of each token.
            num_blocks: number of ``MixerBlock``.
            drop_rate: dropout probability inside the blocks' MLPs.
            activation: ``'gelu'`` or ``'relu'``.
        """
        super().__init__()
        self.patchemb = PatchEmbed(img_size=img_size,
                                   patch_size=patch_size,
                                   in_chans=3,
                                   embed_dim=embed_dim)
        self.blocks = nn.Sequential(*[
            MixerBlock(
                dim=embed_dim, seq_len=self.patchemb.num_patches,
                activation=activation, drop=drop_rate)
            for _ in range(num_blocks)])
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)
        self.num_classes = num_classes

        self.apply(self.init_weights)

    def init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def forward(self, images):
        """
        Args:
            images: ``[batch, 3, img_size, img_size]``.

        Returns:
            logits ``[batch, num_classes]``.
        """
        x = self.patchemb(images)  # [B, num_patches, embed_dim]
        x = self.blocks(x)         # [B, num_patches, embed_dim]
        x = self.norm(x)
        x = x.mean(dim=1)          # [B, embed_dim]
        return self.head(x)

    def visualize(self, logdir):
        """Save the first block's token-mixing first-layer weights as in Figure 5 of the MLP-Mixer paper.

        Each hidden unit of ``blocks[0].mlp_tokens.fc1`` has one weight per patch; its row is drawn as a
        ``grid_size x grid_size`` image over the patch grid (red positive, blue negative, each unit on its
        own symmetric scale). As in the paper, units are paired with the unit of most opposite phase, and
        pairs are ordered from low to high spatial frequency. Writes ``mlpmixer_token_mixing.png``.

        Returns:
            the paths of the files written.
        """
        from matplotlib.figure import Figure

        os.makedirs(logdir, exist_ok=True)
        grid = self.patchemb.grid_size
        weights = self.blocks[0].mlp_tokens.fc1.weight.detach().float().cpu().numpy()  # [tokens_dim, num_patches]
        units = weights.reshape(len(weights), grid, grid)[_paired_frequency_order(weights, grid)]
        columns = 16 if len(units) >= 16 else len(units)
        rows = int(np.ceil(len(units) / columns))
        fig = Figure(figsize=(columns * 0.6, rows * 0.6 + 0.6))
        axes = fig.subplots(rows, columns, squeeze=False)
        for index, ax in enumerate(axes.flat):
            ax.set_axis_off()
            if index < len(units):
                scale = max(float(np.abs(units[index]).max()), 1e-12)
                ax.imshow(units[index], cmap="RdBu_r", vmin=-scale, vmax=scale, interpolation="nearest")
        fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=0.9, wspace=0.08, hspace=0.08)
        fig.suptitle(f"MLP-Mixer block 1 token-mixing units ({len(units)} units, "
                     f"{grid}x{grid} patch grid), paired by opposite phase, low to high frequency", fontsize=8)
        path = os.path.join(logdir, "mlpmixer_token_mixing.png")
        fig.savefig(path, dpi=100)
        return [path]


def _paired_frequency_order(weights, grid):
    """An order of the rows of ``weights`` [units, grid*grid]: pairs of most negatively correlated
    units, the pairs sorted by the mean spatial frequency of their power spectrum."""
    units = weights.reshape(len(weights), grid, grid)
    spectrum = np.abs(np.fft.fft2(units - units.mean(axis=(1, 2), keepdims=True))) ** 2
    freq = np.fft.fftfreq(grid)
    radius = np.sqrt(freq[:, None] ** 2 + freq[None, :] ** 2)
    frequency = (spectrum * radius).sum(axis=(1, 2)) / np.maximum(spectrum.sum(axis=(1, 2)), 1e-12)

    centred = weights - weights.mean(axis=1, keepdims=True)
    centred = centred / np.maximum(np.linalg.norm(centred, axis=1, keepdims=True), 1e-12)
    correlation = centred @ centred.T
    unpaired = set(range(len(weights)))
    pairs = []
    for unit in np.argsort(frequency, kind="stable"):
        if unit not in unpaired:
            continue
        unpaired.discard(unit)
        partners = sorted(unpaired, key=lambda other: correlation[unit, other])
        pair = [int(unit)] + ([int(partners[0])] if partners else [])
        unpaired.difference_update(pair)
        pairs.append(pair)
    pairs.sort(key=lambda pair: float(np.mean(frequency[pair])))
    return [unit for pair in pairs for unit in pair]
