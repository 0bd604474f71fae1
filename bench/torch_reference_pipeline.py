"""Reference input pipeline for bench/pipeline.py: the same kNN-MoCo views built from torchvision transforms (PIL)
and a PyTorch DataLoader. Run in an environment with torch + torchvision (no TensorFlow needed):

  python bench/torch_reference_pipeline.py --images=DIR --workers=2 --batches=20

Prints one JSON line: images/s and the settings. Views per image: anchor + positive at 160 px (RandomResizedCrop
scale [0.2, 1]), 6 small crops at 96 px (scale [0.05, 0.14]) resampled up to 10 times until >= 20 % of their area
lies in the anchor box, MoCo-v2 aug+ for the anchor, A+ (p = 0.5 flip + AutoAugment ImageNet) for positives.
"""

import argparse
import glob
import json
import random
import time

from PIL import Image
from PIL import ImageFilter
import torch
from torchvision import transforms
from torchvision.transforms import functional as F


class GaussianBlur:
  def __init__(self, sigma=(0.1, 2.0)):
    self.sigma = sigma

  def __call__(self, img):
    return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(*self.sigma)))


def moco_v2_chain():
  return transforms.Compose(
    [
      transforms.RandomApply([transforms.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
      transforms.RandomGrayscale(p=0.2),
      transforms.RandomApply([GaussianBlur()], p=0.5),
      transforms.RandomHorizontalFlip(),
    ]
  )


def aplus_chain():
  autoaugment = transforms.Compose(
    [transforms.RandomHorizontalFlip(), transforms.AutoAugment(transforms.AutoAugmentPolicy.IMAGENET)]
  )
  return transforms.RandomChoice([moco_v2_chain(), autoaugment])


def overlap(box, anchor):
  top, left, h, w = box
  at, al, ah, aw = anchor
  inter_h = max(0, min(top + h, at + ah) - max(top, at))
  inter_w = max(0, min(left + w, al + aw) - max(left, al))
  return inter_h * inter_w / (h * w)


class Views(torch.utils.data.Dataset):
  def __init__(self, paths, num_small=6):
    self.paths, self.num_small = paths, num_small
    self.anchor_aug, self.positive_aug = moco_v2_chain(), aplus_chain()

  def __len__(self):
    return 10**9  # an endless stream, like the training iterator

  def __getitem__(self, index):
    img = Image.open(self.paths[index % len(self.paths)]).convert('RGB')
    large = transforms.RandomResizedCrop.get_params(img, (0.2, 1.0), (3 / 4, 4 / 3))
    positive_box = transforms.RandomResizedCrop.get_params(img, (0.2, 1.0), (3 / 4, 4 / 3))
    anchor = self.anchor_aug(F.resized_crop(img, *large, [160, 160]))
    positive = self.positive_aug(F.resized_crop(img, *positive_box, [160, 160]))
    small = []
    for _ in range(self.num_small):
      for _ in range(10):
        box = transforms.RandomResizedCrop.get_params(img, (0.05, 0.14), (3 / 4, 4 / 3))
        if overlap(box, large) >= 0.2:
          break
      small.append(F.pil_to_tensor(self.positive_aug(F.resized_crop(img, *box, [96, 96]))))
    return F.pil_to_tensor(anchor), F.pil_to_tensor(positive), torch.stack(small)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--images', required=True)
  parser.add_argument('--workers', type=int, default=2)
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--batches', type=int, default=20)
  args = parser.parse_args()
  torch.set_num_threads(1)
  paths = sorted(glob.glob(f'{args.images}/*.jpg'))
  loader = torch.utils.data.DataLoader(
    Views(paths),
    batch_size=args.batch,
    num_workers=args.workers,
    persistent_workers=args.workers > 0,
    prefetch_factor=4 if args.workers else None,
  )
  it = iter(loader)
  next(it)  # warm up the workers
  start = time.perf_counter()
  for _ in range(args.batches):
    next(it)
  seconds = time.perf_counter() - start
  print(
    json.dumps(
      {
        'pipeline': 'torchvision+DataLoader',
        'images_per_s': args.batch * args.batches / seconds,
        'workers': args.workers,
        'torch': torch.__version__,
      }
    )
  )


if __name__ == '__main__':
  main()
