"""Evaluation of joint embedding spaces: retrieval and classification metrics."""

from jointspace.evaluate.classify import confusion_matrix, linear_probe, topk_accuracy, zero_shot_classify
from jointspace.evaluate.retrieval import retrieval_metrics, retrieval_report

__all__ = [
    "confusion_matrix",
    "linear_probe",
    "retrieval_metrics",
    "retrieval_report",
    "topk_accuracy",
    "zero_shot_classify",
]
