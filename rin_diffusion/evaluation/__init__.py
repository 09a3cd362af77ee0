"""Sample-quality evaluation: the FID Inception (JAX, torch-free weights) and its metrics.

torch_pickle  reads PyTorch weight files without PyTorch
inception     the TF-FID Inception-v3: pool3 features (+ 1008 logits when the weights have them)
metrics       FID, Inception Score, precision/recall (numpy)
reference     cached statistics of real images (an .npz, an OpenAI reference batch or a TFDS
              dataset:split); fid_protocol, the protocol every FID record states
"""
