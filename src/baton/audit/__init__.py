"""Proving the record was not edited: every run's hash chain, anchored in the run index, and
signed checkpoints of all heads that an auditor verifies with only the public key."""

from .chains import Problem, VerifyReport, verify, verify_run
from .checkpoints import Checkpoint, merkle_root, write_checkpoint

__all__ = ["Checkpoint", "Problem", "VerifyReport", "merkle_root", "verify", "verify_run", "write_checkpoint"]
