"""Configuration of the Azure IoT Hub image (`AZURE_*`; The Things Network v2's `TTI_AZURE_*` names work too)."""

from __future__ import annotations

import base64
import binascii

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from worker_sdk import ImageSettings


class AzureSettings(ImageSettings):
    """Everything the Azure worker reads from its environment."""

    model_config = SettingsConfigDict(env_prefix="AZURE_", extra="ignore")

    hub_hostname: str = Field("", description="myhub.azure-devices.net")
    hub_name: str = Field(
        "",
        validation_alias=AliasChoices("AZURE_HUB_NAME", "TTI_AZURE_HUBNAME"),
        description="Hub name, when the host name is <name>.azure-devices.net",
    )
    policy_name: str = Field("iothubowner", validation_alias=AliasChoices("AZURE_POLICY_NAME", "TTI_AZURE_KEYNAME"))
    policy_key: SecretStr = Field(validation_alias=AliasChoices("AZURE_POLICY_KEY", "TTI_AZURE_KEY"))
    device_id_prefix: str = Field("", pattern=r"^[A-Za-z0-9\-.:_]*$", max_length=64)
    resync_interval_seconds: float = Field(600.0, ge=10)
    report_decoded_payload: bool = True
    delete_devices: bool = Field(True, description="Delete hub devices whose device was deleted here")
    # The device SDK's MQTT client (paho 1.x) waits with select(), which fails for descriptors above 1024;
    # each connection takes three (its TLS socket and a wake-up socket pair), so one process holds ~300.
    max_connections: int = Field(100, ge=1, le=300, description="Open device connections at most")
    idle_seconds: float = Field(300.0, ge=1, description="Close a device connection unused this long")
    token_ttl_seconds: int = Field(3600, ge=300, le=86_400)
    downlink_f_port: int = Field(1, ge=1, le=223, description="FPort of downlinks that do not name one")
    registry_url: str = Field("", description="Registry REST base URL; default https://<hub host name>")
    ca_file: str = Field("", description="Extra CA file (PEM) trusted for the hub's MQTT and HTTPS")
    ca_pem: str = Field("", description="The same, as PEM text (containers have no files of ours)")
    api_version: str = "2021-04-12"

    @field_validator("policy_key")
    @classmethod
    def _check_key(cls, value: SecretStr) -> SecretStr:
        try:
            base64.b64decode(value.get_secret_value(), validate=True)
        except (binascii.Error, ValueError) as err:
            raise ValueError("must be the base64 key of the shared access policy") from err
        return value

    @model_validator(mode="after")
    def _host(self) -> AzureSettings:
        if not self.hub_hostname:
            if not self.hub_name:
                raise ValueError("set AZURE_HUB_HOSTNAME (or AZURE_HUB_NAME / TTI_AZURE_HUBNAME)")
            self.hub_hostname = f"{self.hub_name}.azure-devices.net"
        return self

    @property
    def registry_base(self) -> str:
        """The registry REST API base URL."""
        return (self.registry_url or f"https://{self.hub_hostname}").rstrip("/")
