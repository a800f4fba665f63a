"""Evaluation: Dice, IoU, HD95 with bootstrap CIs, and evaluation reports."""
