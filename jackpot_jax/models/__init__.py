"""Model registry. Importing this package registers every model family."""

# Imported for their registrations.
from jackpot_jax.models import (cifar_resnet, gpt2, llama, mobilenet,  # noqa: F401
                                torchvision_resnet, torchvision_vgg, vgg_cifar, vit)
from jackpot_jax.models.registry import (FolderModel, ModelSpec, build_model, folder_model,
                                         folder_model_types, get_model_spec, model_names,
                                         register, register_folder_reader, torch_module_name)

__all__ = ["FolderModel", "ModelSpec", "build_model", "folder_model", "folder_model_types",
           "get_model_spec", "model_names", "register", "register_folder_reader",
           "torch_module_name"]
