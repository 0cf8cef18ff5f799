"""Steering a sampler towards what a user asks for (DESIGN.md section 5), one module per idea:

* `rewards.py`: black-box rewards of decoded samples, registered by kind and parsed from a SPEC string;
* `particles.py`: reward-guided particles (sequential Monte Carlo / Feynman-Kac steering);
* `resampling.py`: when and how particles are resampled;
* `remask.py`: ReMDM remasking, so a masked sampler can take back a committed token.

Nothing is imported here, so a module of this package can import the samplers without a cycle.
"""
