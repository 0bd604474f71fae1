"""The one config schema: every field and its default lives here (MoCo-v2 two-crop at demo scale).

The variants (mocov2.py, multicrop.py, knn.py) and the presets after a colon (`--config=configs/knn.py:coco`) are
tables of overrides in presets.py.
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.method = 'mocov2'  # A label for logs and the summary; the fields below define the method.
  c.dataset = 'embedded'  # embedded[:SPLIT] | embedded_subset[:SPLIT] | tfds:NAME[:SPLIT] | folder:PATH
  # Any of them may end in a subset (input_pipeline/subsets.py): |uniform=N, |pareto=ALPHA,total=N or |random=N,
  # then ,seed=S and ,scale=F; the run writes the list it draws to WORKDIR/subset.tsv.
  # The labelled queries the kNN monitor scores against its bank. 'auto': the split held out beside the bank
  # (knn_bank_dataset, else dataset): embedded:test, tfds:NAME:test, or a train/ folder's sibling val/ (else test/)
  # with the same class sub-folders; with none, the monitor is off and the console says so once
  # (input_pipeline/sources.py, held_out_split). '' turns the monitor off; a dataset string names the queries.
  c.eval_dataset = 'auto'
  c.knn_bank_dataset = ''  # labelled bank for the kNN monitor; '' = `dataset` (its labels)
  c.data_dir = ml_collections.FieldReference(None, field_type=str)  # TFDS data dir

  c.num_epochs = 20
  c.num_train_steps = 1000  # > 0 overrides num_epochs
  # The demo's scale, chosen by scripts/sweep_demo.py (bench/RESULTS.md): at a fixed CPU budget, more and smaller
  # steps of a shallower network learn more than fewer large ones.
  c.batch_size = 64  # global
  # Split-BN groups per device: the keys are shuffled over devices x bn_groups BN groups, which must be >= 2.
  # 0 = auto: one group per device on several devices, groups of 128 images (>= 2) on one device.
  c.bn_groups = 2  # 32 images a group in the demo
  c.seed = 0

  c.model = ml_collections.ConfigDict()
  c.model.arch = 'resnet10'
  c.model.width = 0.25  # multiplier of the 64-256-512 channel widths
  c.model.stem = 'cifar'  # 'imagenet' (7x7/2 + max-pool) or 'cifar' (3x3/1, for 32-96 px)
  c.model.dilate_last = False
  c.model.zero_init_residual = False
  c.model.dtype = 'float32'  # compute dtype; parameters stay float32
  c.model.projection_dim = 128
  c.model.hidden_dim = 0  # 0: the backbone's feature width
  c.model.head = 'mlp'  # MoCo-v2's MLP, or 'linear' (one layer, as MoCo v1 and the MoCo CIFAR-10 Colab)
  c.model.normalization = 'imagenet'  # input mean/std: 'imagenet' or 'cifar10' (jax_moco.normalization.NORMALIZATION)

  c.moco = ml_collections.ConfigDict()
  c.moco.queue_size = 1024  # K, a multiple of batch_size (16 steps of keys in the demo)
  c.moco.temperature = 0.1  # the MoCo CIFAR-10 demo's; the paper presets use 0.2
  c.moco.momentum = 0.99
  c.moco.momentum_schedule = 'constant'  # or 'cosine' (ramp to 1)
  c.moco.nn_weight = 0.0  # lambda; 0 disables the NN loss and Q_g
  c.moco.nn_topk = 20
  c.moco.nn_warmup_epochs = 0.0
  c.moco.nn_order = 'loss_then_enqueue'  # or 'enqueue_then_mine' (appendix B)
  # What the neighbours are mined on (Van Gansbeke et al. 2021, Sec. 4.3: "it is important to mine the neighbors
  # using the features before the projection head", VOC 84.2 % vs 82.8 %). 'backbone': the positive's backbone
  # feature g(x+) against Q_g, the momentum encoder's normalised backbone features of the anchors. 'head': its
  # normalised projection f(x+) against Q_h, the anchors' projections the instance loss contrasts with (the
  # neighbours are then the k largest of its l_neg), and no Q_g is kept. Either way the loss pulls f(x+) towards the
  # neighbours' rows of Q_h.
  c.moco.nn_features = 'backbone'
  # The MoCo CIFAR-10 Colab's symmetric loss (two crops only): each crop is also the query for the other's key, the
  # two losses are summed and both crops' keys enqueued.
  c.moco.symmetric = False

  c.crops = ml_collections.ConfigDict()
  c.crops.large_size = 32
  c.crops.small_size = 16
  c.crops.num_small = 0
  c.crops.large_scale = (0.2, 1.0)
  c.crops.small_scale = (0.05, 0.14)
  c.crops.min_overlap = 0.0  # constrained multi-crop threshold (0.2 in the paper); 0 = unconstrained
  c.crops.overlap_tries = 10
  # Cap on the anchor-positive IoU (Van Gansbeke et al. 2021, Figs. 2-3): the positive is redrawn, up to
  # max_iou_tries - 1 times, while its IoU with the anchor exceeds max_iou, then (an anchor too large for the cap)
  # up to max_iou_tries fresh pairs; else the candidate of lowest IoU (input_pipeline/crops.py). 1.0 = no cap.
  c.crops.max_iou = 1.0
  c.crops.max_iou_tries = 50
  c.crops.aplus = False  # A+ (AutoAugment branch) for positives
  # With crops.aplus, the share of positives (and small crops) that get flip + AutoAugment instead of aug+, drawn per
  # view: 0.5 is A+, the random mix of Table 7 of Van Gansbeke et al. 2021 (VOC 83.7 %); 1.0 is its AutoAugment alone
  # (79.9 %; the anchor keeps aug+ in both); 0.0 is aug+.
  c.crops.aplus_probability = 0.5
  c.crops.blur_reference_size = 224  # blur sigma [0.1, 2] px is for 224 px views; scaled to the view size
  c.crops.blur_probability = 0.5  # MoCo-v2's; the MoCo CIFAR-10 Colab applies no blur
  # Pixel work of the augmentations (colour, grayscale, blur, AutoAugment) in the train step on the accelerator;
  # tf.data still decodes, crops and draws every random choice, so the views are the same either way.
  c.crops.augment_on_device = False

  c.optim = ml_collections.ConfigDict()
  c.optim.base_lr = 0.12  # at batch 256, scaled linearly (0.03 for the demo's 64); the paper presets use 0.3
  c.optim.momentum = 0.9
  c.optim.weight_decay = 5e-4
  c.optim.warmup_epochs = 0.0
  # Cosine decay per 'step', or per 'epoch' as the MoCo CIFAR-10 Colab (epoch e of E at peak (1 + cos(pi e / E)) / 2).
  c.optim.lr_decay_every = 'step'
  # 'cosine' (above), or 'step': base_lr times lr_step_factor at the start of each epoch in lr_milestones, no warm-up
  # (MoCo v1's: x0.1 at epochs 120 and 160 of 200; He et al. 2020, Sec. 4).
  c.optim.schedule = 'cosine'
  c.optim.lr_milestones = ()  # epochs, increasing; only with schedule='step'
  c.optim.lr_step_factor = 0.1

  c.knn = ml_collections.ConfigDict()
  c.knn.k = 200
  c.knn.temperature = 0.1
  c.knn.batch_size = 500
  c.knn.max_bank_examples = 10000  # bounds the monitor's time on the full Debian set; 0 = the whole bank
  c.knn.max_query_examples = 0  # eval examples the monitor scores (the first ones); 0 = the whole eval set
  c.knn.every_epochs = 0.0  # also evaluate during training every this many epochs; 0 = before and after only
  c.knn.feature = 'backbone'  # or 'head': the normalised projection, as the MoCo CIFAR-10 Colab's monitor

  # Whether XLA:CPU runs the convolutions through YNNPACK: 'off' (XLA's own, measured faster; see jax_moco/xla_cpu.py)
  # or 'on' (jaxlib's default). Nothing changes on GPU or TPU.
  c.cpu_ynnpack_convolutions = 'off'

  c.log_every_steps = 50
  c.checkpoint_every_steps = 200
  c.keep_checkpoints = 3
  return c
