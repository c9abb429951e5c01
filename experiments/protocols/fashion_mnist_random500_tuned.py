"""Fashion-MNIST (real data, the Debian package), forget random:500, a stronger original and equal tuning: every
method at its reference defaults and tuned, seeds 0-2.

A ResNet-18 of width 1/4 (16 channels in the first stage) on the fixed stratified 4,000-image subset of the
60,000 training images that fashion_mnist_random500.py uses, evaluated on the same fixed 2,000-image test subset,
trained with the official recipe for 12 epochs at batch 128; 1,000 further training images are held out as
the validation set (no run trains on them). Each method tries the 4 configurations of its grid in
jaxunlearn.experiment.FASHION_MNIST_TUNING (its reference learning rate and one other × its reference value
of one knob of its own and one other) on seed 0; the one closest to the retrained model on forget-train,
retain-train and validation accuracy runs on every seed as <method>-tuned. As run on this 2-core machine,
on one CPU device; results in experiments/results/fashion_mnist_random500_tuned/:

    jaxunlearn experiment experiments/protocols/fashion_mnist_random500_tuned.py
"""

from jaxunlearn.protocols import tuned_fashion_mnist_protocol

PROTOCOL = tuned_fashion_mnist_protocol("random:500")
