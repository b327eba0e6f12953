"""Custom socket types of the pack."""
from comfy_api.latest import io

PlanType = io.Custom("SPARSE_VDIT_PLAN")
