"""pprof's ``profile.proto`` (``perftools.profiles``) as protobuf message classes.

The schema is the official one, shipped beside this module (``profile.proto``, from google/pprof
at commit b9395ee, Apache License 2.0). ``_SERIALIZED`` is that file compiled by ``protoc``
(``python -m grpc_tools.protoc -I. --descriptor_set_out=profile.desc profile.proto``; the first
file of the set, serialized). It is loaded into a private descriptor pool rather than shipped as
generated ``_pb2`` code, whose runtime check would tie conctools to one protobuf release: this works
with protobuf 4.21 and later. ``tests/test_exporters_pprof.py`` checks it against ``profile.proto``.

Needs the ``protobuf`` package (``pip install 'conctools[pprof]'``).
"""

# ruff: noqa: E501  (the serialized descriptor, as protoc wrote it)
from __future__ import annotations

from typing import Any

__all__ = ["Profile", "message_class"]

_SERIALIZED = (
    b'\n\rprofile.proto\x12\x12perftools.profiles"\x8e\x05\n\x07Profile\x12>\n\x0bsample_ty'
    b"pe\x18\x01 \x03(\x0b2\x1d.perftools.profiles.ValueTypeR\nsampleType\x122\n\x06sampl"
    b"e\x18\x02 \x03(\x0b2\x1a.perftools.profiles.SampleR\x06sample\x125\n\x07mapping\x18\x03 \x03(\x0b"
    b"2\x1b.perftools.profiles.MappingR\x07mapping\x128\n\x08location\x18\x04 \x03(\x0b2\x1c.p"
    b"erftools.profiles.LocationR\x08location\x128\n\x08function\x18\x05 \x03(\x0b2\x1c.per"
    b"ftools.profiles.FunctionR\x08function\x12!\n\x0cstring_table\x18\x06 \x03(\tR\x0bst"
    b"ringTable\x12\x1f\n\x0bdrop_frames\x18\x07 \x01(\x03R\ndropFrames\x12\x1f\n\x0bkeep_frames\x18\x08 "
    b"\x01(\x03R\nkeepFrames\x12\x1d\n\ntime_nanos\x18\t \x01(\x03R\ttimeNanos\x12%\n\x0eduration_n"
    b"anos\x18\n \x01(\x03R\rdurationNanos\x12>\n\x0bperiod_type\x18\x0b \x01(\x0b2\x1d.perftools.p"
    b"rofiles.ValueTypeR\nperiodType\x12\x16\n\x06period\x18\x0c \x01(\x03R\x06period\x12\x18\n\x07com"
    b"ment\x18\r \x03(\x03R\x07comment\x12.\n\x13default_sample_type\x18\x0e \x01(\x03R\x11defaultSam"
    b'pleType\x12\x17\n\x07doc_url\x18\x0f \x01(\x03R\x06docUrl"3\n\tValueType\x12\x12\n\x04type\x18\x01 \x01(\x03R'
    b'\x04type\x12\x12\n\x04unit\x18\x02 \x01(\x03R\x04unit"p\n\x06Sample\x12\x1f\n\x0blocation_id\x18\x01 \x03(\x04R\nlo'
    b"cationId\x12\x14\n\x05value\x18\x02 \x03(\x03R\x05value\x12/\n\x05label\x18\x03 \x03(\x0b2\x19.perftools.pr"
    b'ofiles.LabelR\x05label"X\n\x05Label\x12\x10\n\x03key\x18\x01 \x01(\x03R\x03key\x12\x10\n\x03str\x18\x02 \x01(\x03R'
    b'\x03str\x12\x10\n\x03num\x18\x03 \x01(\x03R\x03num\x12\x19\n\x08num_unit\x18\x04 \x01(\x03R\x07numUnit"\xd7\x02\n\x07Mappin'
    b"g\x12\x0e\n\x02id\x18\x01 \x01(\x04R\x02id\x12!\n\x0cmemory_start\x18\x02 \x01(\x04R\x0bmemoryStart\x12!\n\x0cmemo"
    b"ry_limit\x18\x03 \x01(\x04R\x0bmemoryLimit\x12\x1f\n\x0bfile_offset\x18\x04 \x01(\x04R\nfileOffset"
    b"\x12\x1a\n\x08filename\x18\x05 \x01(\x03R\x08filename\x12\x19\n\x08build_id\x18\x06 \x01(\x03R\x07buildId\x12#\n\rh"
    b"as_functions\x18\x07 \x01(\x08R\x0chasFunctions\x12#\n\rhas_filenames\x18\x08 \x01(\x08R\x0chas"
    b"Filenames\x12(\n\x10has_line_numbers\x18\t \x01(\x08R\x0ehasLineNumbers\x12*\n\x11has_i"
    b'nline_frames\x18\n \x01(\x08R\x0fhasInlineFrames"\x9e\x01\n\x08Location\x12\x0e\n\x02id\x18\x01 \x01(\x04'
    b"R\x02id\x12\x1d\n\nmapping_id\x18\x02 \x01(\x04R\tmappingId\x12\x18\n\x07address\x18\x03 \x01(\x04R\x07addres"
    b"s\x12,\n\x04line\x18\x04 \x03(\x0b2\x18.perftools.profiles.LineR\x04line\x12\x1b\n\tis_folded"
    b'\x18\x05 \x01(\x08R\x08isFolded"S\n\x04Line\x12\x1f\n\x0bfunction_id\x18\x01 \x01(\x04R\nfunctionId\x12\x12\n'
    b'\x04line\x18\x02 \x01(\x03R\x04line\x12\x16\n\x06column\x18\x03 \x01(\x03R\x06column"\x8a\x01\n\x08Function\x12\x0e\n\x02id'
    b"\x18\x01 \x01(\x04R\x02id\x12\x12\n\x04name\x18\x02 \x01(\x03R\x04name\x12\x1f\n\x0bsystem_name\x18\x03 \x01(\x03R\nsystemN"
    b"ame\x12\x1a\n\x08filename\x18\x04 \x01(\x03R\x08filename\x12\x1d\n\nstart_line\x18\x05 \x01(\x03R\tstartLi"
    b"neB-\n\x1dcom.google.perftools.profilesB\x0cProfileProtob\x06proto3"
)


def _load() -> Any:
    from google.protobuf import descriptor_pool

    pool = descriptor_pool.DescriptorPool()  # private: another copy of perftools.profiles cannot clash
    pool.AddSerializedFile(_SERIALIZED)
    return pool


_pool = _load()


def message_class(name: str) -> Any:
    """The message class of ``perftools.profiles.<name>`` (``"Profile"``, ``"Sample"``, ...)."""
    from google.protobuf import message_factory

    descriptor = _pool.FindMessageTypeByName(f"perftools.profiles.{name}")
    get = getattr(message_factory, "GetMessageClass", None)
    if get is not None:
        return get(descriptor)
    return message_factory.MessageFactory(_pool).GetPrototype(descriptor)  # protobuf < 4.22


Profile: Any = message_class("Profile")
