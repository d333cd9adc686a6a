"""The package layout: `import zoo` stays light, and every public name survives the move."""

import subprocess
import sys

import zoo


def test_import_zoo_does_not_import_orbax_or_the_hub_client():
    code = (
        "import sys, zoo; "
        "heavy = [m for m in ('orbax', 'huggingface_hub', 'checkpoints', 'pynndescent') "
        "if m in sys.modules]; "
        "print(heavy); sys.exit(bool(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_public_name_resolves():
    for name in zoo.__all__:
        assert getattr(zoo, name) is not None, name


def test_registry_names_every_architecture_by_its_class_name():
    for name, (model_class, config_class) in zoo.ARCHITECTURES.items():
        assert model_class.__name__ == name
        assert config_class.__name__ == f"{name}Config"
