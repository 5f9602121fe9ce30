"""Each provider's fixture lives in its own module; importing it here registers it."""

from .aws_kms_fixture import aws_kms_provider
from .local_fixture import local_provider
from .pkcs11_fixture import pkcs11_provider

__all__ = ["aws_kms_provider", "local_provider", "pkcs11_provider"]
