"""Model families: layers.py (what they share), resnet.py (the original project's),
fast_resnet.py (airbench's), registry.py (presets, budget, what the package asks of a family)."""

from resnet_jax.models.registry import (FAMILIES, PRESET_NAMES, Family, ImageShape, Model,
                                        ParamBudgetError, check_budget, config_fields,
                                        count_params, family_fields, family_of, fit_to_data,
                                        from_config, get_model, init_variables, model_config)
