"""Integration templates: the file schema, loading with clear errors, and field values to environment."""

from .loader import TemplateRegistry, load_template
from .models import IntegrationTemplate, TemplateField
from .values import ResolvedConfig, check_values

__all__ = [
    "IntegrationTemplate",
    "ResolvedConfig",
    "TemplateField",
    "TemplateRegistry",
    "check_values",
    "load_template",
]
