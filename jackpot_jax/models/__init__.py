"""Model registry. Importing this package registers every model family."""

# Imported for their registrations.
from jackpot_jax.models import (cifar_resnet, gpt2, llama, mobilenet,  # noqa: F401
                                torchvision_resnet, torchvision_vgg, vgg_cifar, vit)
from jackpot_jax.models.registry import (ModelSpec, build_model, get_model_spec, model_names,
                                         register, torch_module_name)

__all__ = ["ModelSpec", "build_model", "get_model_spec", "model_names", "register",
           "torch_module_name"]
