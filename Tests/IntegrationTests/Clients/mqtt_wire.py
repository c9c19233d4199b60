"""MQTT packets built by hand from the spec, for clients that must send what libraries will not."""


def remaining_length(length):
    """The variable byte integer of MQTT 5.0 §1.5.5 (also 3.1.1's Remaining Length)."""
    encoded = bytearray()
    while True:
        byte, length = length % 128, length // 128
        encoded.append(byte | (0x80 if length else 0))
        if not length:
            return bytes(encoded)


def packet(first_byte, body):
    return bytes([first_byte]) + remaining_length(len(body)) + body


def utf8(text):
    data = text.encode()
    return len(data).to_bytes(2, "big") + data
