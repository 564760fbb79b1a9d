"""Stage 2 of RLFF-ESC: a reward model that predicts a candidate's future-oriented reward without
simulating.

The simulation scores each of m candidate replies per context by rolling the dialogue forward:
R_fut = v_end + λ·(T − t_end)/T·[goal reached] (the critic's final score plus a bonus for reaching
the goal early). Rolling out is far too slow to do for every GRPO sample, so a
sequence-classification model learns to predict it from (context, visible reply) alone. Three
variants are trained on the same split by dialogue:

- ``classification`` (the paper's): label y = 1[R_fut ≥ δ], cross-entropy; its score is P(y = 1).
- ``regression``: R_fut itself, mean squared error; its score is the predicted R_fut.
- ``ranking``: Bradley–Terry on pairs of candidates of one context, −log σ(r_preferred − r_other)
  (TRL's ``RewardTrainer``); its score is the scalar reward.

and one untrained reference, ``random`` (same architecture, random head): the paper's ablation.

One job per module:

============== =====================================================================================
``target``     R_fut and its label per trajectory, the reward dataset (written and loaded)
``variants``   the variant names and heads, the error type, the stage folder and its writer guard
``inputs``     the one input text, the reward frame, the split by dialogue, datasets, tokenisation
``backbone``   tokenizer, sequence-classification backbone, LoRA, precision
``scorer``     scoring a saved model (GRPO's reward functions wrap it: :mod:`rlff_utils.rewards`)
``metrics``    held-out metrics of one variant, the comparison table
``train``      training with resume, the stage entry ``train_reward_models``
============== =====================================================================================

The validity cards are :mod:`rlff_utils.validation`, the learned critic :mod:`rlff_utils.critic.learned`;
figures are in :mod:`rlff_utils.plots`. Nothing is imported here, so importing the scorer does
not load the training code.
"""
