"""A PyTorch eager reference of gmcl's MeRGAN iteration, for side-by-side timing (benchmarks.suite).

The same network shapes, batch and losses as ``gmcl.methods.mergan`` with the official
settings (variant ra or jr, a snapshot G_{t-1} present, as at task 2):

* generator: z (128) -> Linear -> 4x4x128 -> three 5x5 stride-2 transposed convolutions
  128 -> 64 -> 32 -> 1 with class-conditional batch norm (per-class batch statistics, no
  running averages) and ReLU between, tanh;
* critic: three 5x5 stride-2 convolutions 1 -> 32 -> 64 -> 128, LeakyReLU(0.2), a linear
  WGAN head and a linear auxiliary head over 10 classes;
* one iteration: 5 critic steps (WGAN loss, gradient penalty 10 on real/fake
  interpolates -- a double backward --, AC-GAN loss on real; JR adds replayed samples of
  the old classes as real data), then one generator step (WGAN + AC-GAN loss; RA adds
  ``lambda / n_old * sum 0.5 ||G_t(z, c) - G_{t-1}(z, c)||^2``, JR the replayed classes'
  adversarial loss); Adam(1e-4, betas (0, 0.9)).

It is a timing reference, not a port to train with: initialisers and the transposed
convolutions' padding convention (torch's flipped kernel) differ, which changes no shape and
no FLOP. Needs the optional ``bench`` extra (``pip install -e '.[bench]'``, torch 2.13 CPU).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

Z_DIM, NUM_CLASSES = 128, 10


class CBN(nn.Module):
  """Batch norm with per-class scale/offset and per-class batch statistics (gmcl's CBN)."""

  def __init__(self, channels: int):
    super().__init__()
    self.scale = nn.Parameter(torch.ones(NUM_CLASSES, channels))
    self.offset = nn.Parameter(torch.zeros(NUM_CLASSES, channels))

  def forward(self, x, groups, labels):
    m1, m2 = x.mean((2, 3)), x.square().mean((2, 3))  # (B, C)
    counts = groups.sum(0).clamp_min(1.0)[:, None]
    mean, sq = groups @ (groups.T @ m1 / counts), groups @ (groups.T @ m2 / counts)
    var = (sq - mean.square()).clamp_min(0.0)
    x = (x - mean[:, :, None, None]) * torch.rsqrt(var[:, :, None, None] + 1e-5)
    return self.scale[labels][:, :, None, None] * x + self.offset[labels][:, :, None, None]


class Generator(nn.Module):
  def __init__(self, ngf: int = 32, channels: int = 1):
    super().__init__()
    self.fc = nn.Linear(Z_DIM, 4 * 4 * 4 * ngf)
    self.ngf = ngf
    widths = [4 * ngf, 2 * ngf, ngf, channels]
    self.norms = nn.ModuleList([CBN(w) for w in widths[:-1]])
    self.convs = nn.ModuleList([nn.ConvTranspose2d(widths[i], widths[i + 1], 5, 2, padding=2,
                                                   output_padding=1) for i in range(3)])

  def forward(self, z, labels):
    groups = F.one_hot(labels, NUM_CLASSES).float()
    x = self.fc(z).view(-1, 4 * self.ngf, 4, 4)
    for i, conv in enumerate(self.convs):
      x = conv(F.relu(self.norms[i](x, groups, labels)))
    return torch.tanh(x)


class Critic(nn.Module):
  def __init__(self, ndf: int = 32, channels: int = 1):
    super().__init__()
    self.convs = nn.ModuleList([nn.Conv2d(channels, ndf, 5, 2, 2), nn.Conv2d(ndf, 2 * ndf, 5, 2, 2),
                                nn.Conv2d(2 * ndf, 4 * ndf, 5, 2, 2)])
    self.wgan = nn.Linear(4 * ndf * 16, 1)
    self.aux = nn.Linear(4 * ndf * 16, NUM_CLASSES)

  def forward(self, x):
    for conv in self.convs:
      x = F.leaky_relu(conv(x), 0.2)
    x = x.flatten(1)
    return self.wgan(x)[:, 0], self.aux(x)


class MeRGANIteration:
  """One callable iteration over a fixed random data set; ``variant`` "ra" or "jr"."""

  def __init__(self, variant: str = "ra", batch_size: int = 64, features: int = 32, n_critic: int = 5,
               old_classes: int = 1, seed: int = 0):
    torch.manual_seed(seed)
    self.variant, self.n, self.n_critic = variant, batch_size, n_critic
    self.g, self.d, self.g_prev = Generator(features), Critic(features), Generator(features)
    self.g_prev.requires_grad_(False)
    self.opt_g = torch.optim.Adam(self.g.parameters(), 1e-4, betas=(0.0, 0.9))
    self.opt_d = torch.optim.Adam(self.d.parameters(), 1e-4, betas=(0.0, 0.9))
    self.data = torch.rand(2048, 1, 32, 32) * 2 - 1
    self.current = old_classes  # the current task's class; classes below it are old
    self.y_old = torch.arange(batch_size) % old_classes
    self.inv_n_old = 1.0 / old_classes

  def _z(self):
    return torch.randn(self.n, Z_DIM)

  def __call__(self):
    n = self.n
    y = torch.full((n,), self.current, dtype=torch.long)
    for _ in range(self.n_critic):
      x = self.data[torch.randint(0, len(self.data), (n,))]
      with torch.no_grad():
        fake = self.g(self._z(), y)
        if self.variant == "jr":
          z_r = self._z()
          old, new = self.g_prev(z_r, self.y_old), self.g(z_r, self.y_old)
      s_real, a_real = self.d(x)
      s_fake, _ = self.d(fake)
      eps = torch.rand(n, 1, 1, 1)
      xhat = (eps * x + (1 - eps) * fake).requires_grad_(True)
      grad, = torch.autograd.grad(self.d(xhat)[0].sum(), xhat, create_graph=True)
      gp = (torch.sqrt(grad.square().flatten(1).sum(1) + 1e-12) - 1).square().mean()
      loss = s_fake.mean() - s_real.mean() + 10 * gp + F.cross_entropy(a_real, y)
      if self.variant == "jr":
        s_old, a_old = self.d(old)
        s_new, _ = self.d(new)
        loss = loss + (s_new - s_old).mean() + F.cross_entropy(a_old, self.y_old)
      self.opt_d.zero_grad(set_to_none=True)
      loss.backward()
      self.opt_d.step()
    z, z_r = self._z(), self._z()
    s, logits = self.d(self.g(z, y))
    loss = -s.mean() + F.cross_entropy(logits, y)
    new = self.g(z_r, self.y_old)
    if self.variant == "ra":
      with torch.no_grad():
        old = self.g_prev(z_r, self.y_old)
      loss = loss + 1e-3 * self.inv_n_old * 0.5 * (new - old).square().sum()
    else:
      s_new, a_new = self.d(new)
      loss = loss - s_new.mean() + F.cross_entropy(a_new, self.y_old)
    self.opt_g.zero_grad(set_to_none=True)
    loss.backward()
    self.opt_g.step()
    return loss
