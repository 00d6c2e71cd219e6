"""The SDK: one Matrix device with end-to-end encryption, a local index and the data-room API.

``DataroomsClient`` (``client``) owns the device, the sync loop and the send path; the
capabilities hang off it: ``rooms``, ``records``, ``state``, ``files``, ``messages``,
``keys`` and ``telemetry``. Services and the CLI call this package, never nio or the
private stores directly. The names users import are re-exported from ``datarooms``.
"""
