"""A plugin runs its own event loop in a thread (asyncio.run) and asks the main loop for its
config; the main loop's thread meanwhile joins the plugin thread: a cycle through both loops."""

import asyncio
import threading


async def get_config() -> dict[str, str]:
    return {"name": "plugin"}


async def plugin_main(main_loop: asyncio.AbstractEventLoop) -> None:
    future = asyncio.run_coroutine_threadsafe(get_config(), main_loop)
    config = await asyncio.wrap_future(future)  # MARK: plugin-awaits
    print("plugin configured", config)


def run_plugin(main_loop: asyncio.AbstractEventLoop) -> None:
    asyncio.run(plugin_main(main_loop))


async def main() -> None:
    plugin = threading.Thread(target=run_plugin, args=(asyncio.get_running_loop(),), name="plugin")
    plugin.start()
    plugin.join()  # MARK: main-joins


asyncio.run(main())
